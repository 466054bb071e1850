"""CML Fleet's shared package: the domain, the event contract and the AWS adapters.

Deployed as a Lambda layer (found under /opt/python) and copied into the relay image.
"""

__version__ = "0.1.0"
