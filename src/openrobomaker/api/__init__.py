"""The wire protocol: rest-json routing, validation against the API definitions, SigV4, serialization."""
