# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The options here are implemented by plugins/module_utils/_ec2/_client.py (ec2_argument_spec).

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  region:
    description:
      - AWS region to work in, for example V(eu-central-1).
      - Falls back to the E(AWS_REGION), then E(AWS_DEFAULT_REGION) environment variable.
      - Checked against the regions botocore knows before any resource is created.
    type: str
    aliases: [aws_region]
  endpoint_url:
    description:
      - URL of the EC2 API, to use an EC2-compatible endpoint (a VPC endpoint, a local emulator such as moto).
      - Falls back to E(AWS_ENDPOINT_URL_EC2), then E(AWS_ENDPOINT_URL). Default is AWS's regional endpoint.
    type: str
    aliases: [aws_endpoint_url, ec2_url]
  access_key:
    description:
      - AWS access key id.
      - Falls back to E(AWS_ACCESS_KEY_ID), then E(AWS_ACCESS_KEY). When neither the key pair nor O(profile)
        is set, boto3's usual chain applies (shared config files, container or instance role).
    type: str
    aliases: [aws_access_key_id, aws_access_key]
  secret_key:
    description:
      - AWS secret access key. Never logged.
      - Falls back to E(AWS_SECRET_ACCESS_KEY), then E(AWS_SECRET_KEY).
    type: str
    aliases: [aws_secret_access_key, aws_secret_key]
  session_token:
    description:
      - AWS session token for temporary credentials. Never logged.
      - Falls back to E(AWS_SESSION_TOKEN), then E(AWS_SECURITY_TOKEN).
    type: str
    aliases: [aws_session_token, security_token]
  profile:
    description:
      - Named profile of the AWS shared config files. Falls back to E(AWS_PROFILE).
    type: str
    aliases: [aws_profile]
requirements:
  - boto3 >= 1.34.0
  - botocore >= 1.34.0
notes:
  - Calls to AWS are retried with exponential backoff and full jitter on throttling, HTTP 429 and 5xx answers
    and dropped connections (botocore's own retries are switched off so that attempts do not multiply);
    errors caused by the input (HTTP 4xx) fail at once.
"""
