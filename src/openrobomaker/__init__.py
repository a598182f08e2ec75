"""OpenRoboMaker: a self-hosted service that speaks the AWS RoboMaker API."""

__version__ = "0.1.0"
