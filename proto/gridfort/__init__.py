"""Generated protobuf code for the Gridfort wire contract (see ``proto/``)."""
