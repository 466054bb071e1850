"""The local stack: CML Fleet on one machine, offline, on an embedded moto server.

moto stands in for AWS; this package fills exactly the gaps moto leaves (brief §8):
SNS subscriptions, Lambda targets of EventBridge rules (replaced by SQS tap queues drained
into the handlers), the DynamoDB stream (polled into the publisher), and the relay.
"""

# The demo users of the local stack and their roles (tokens from the development issuer).
DEMO_USERS = {"ada": "admin", "max": "manager", "alice": "user", "bob": "user"}
