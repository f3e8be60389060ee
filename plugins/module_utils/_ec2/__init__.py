# Private to this collection: EC2 (boto3): client, engine and discovery.
