"""The review page: a local web app to check and correct the cells of a run (`hemaedge review RUN_DIR`)."""
