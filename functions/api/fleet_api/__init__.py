"""The CML Fleet REST API: a FastAPI app, run in Lambda through Mangum behind the ALB."""
