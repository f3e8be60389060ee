# Private to this collection: EC2 helpers of the modules; no stable interface.
