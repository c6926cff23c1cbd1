"""Images and Tree-of-Life shards: decode/resize/encode, the shard format and writer, transforms, streaming DataModules, the synthetic tree of life."""
