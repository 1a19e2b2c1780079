"""Package data for the cloud (JSON tables read at run time with importlib.resources; no code)."""
