"""The rules of each RoboMaker resource: plain Python over the store and the object store, no HTTP."""
