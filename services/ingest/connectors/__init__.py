"""Channel connectors: each reads one kind of channel and hands batches to the publisher."""
