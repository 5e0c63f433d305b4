"""A node pack that fails to import, as one with a missing dependency does on a worker."""

NODE_CLASS_MAPPINGS = {"TestBrokenPackNode": object}

raise ImportError("broken_pack needs libmissing, which this worker lacks (a test pack)")
