"""Scale-out pieces built on torch.distributed: the exact sharded top-k (``topk``)."""
