"""`openrobomaker robot-credentials` and `openrobomaker agent`: the two commands of a robot fleet.

openrobomaker robot-credentials ROBOT_ARN --endpoint URL > robot.json   # laptop, account's AWS keys
openrobomaker agent --endpoint URL --credentials robot.json --work-dir DIR  # on each robot
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx


def cmd_robot_credentials(args: argparse.Namespace) -> int:
    import boto3

    from openrobomaker.agent.client import sign

    session = boto3.Session(profile_name=args.profile) if args.profile else boto3.Session()
    keys = session.get_credentials()
    if keys is None:
        print("openrobomaker: no AWS credentials found (environment, profile or config)", file=sys.stderr)
        return 2
    keys = keys.get_frozen_credentials()
    region = args.region or session.region_name or args.robot.split(":")[3]
    url = args.endpoint.rstrip("/") + "/_agent/v1/credentials"
    body = json.dumps({"robot": args.robot}).encode()
    headers = sign("POST", url, body, keys.access_key, keys.secret_key, region)
    if keys.token:
        headers["X-Amz-Security-Token"] = keys.token
    response = httpx.post(url, content=body, headers=headers, timeout=30)
    if response.status_code != 200:
        print(f"openrobomaker: {response.status_code} {response.text}", file=sys.stderr)
        return 1
    print(json.dumps({**response.json(), "endpoint": args.endpoint}, indent=2))
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from openrobomaker.agent.__main__ import main as agent_main

    argv = ["--credentials", str(args.credentials), "--work-dir", str(args.work_dir)]
    if args.endpoint:
        argv += ["--endpoint", args.endpoint]
    return agent_main(argv)


def add_commands(commands, _add_store_options) -> None:
    creds = commands.add_parser(
        "robot-credentials", help="mint a robot's agent credentials (prints robot.json)"
    )
    creds.add_argument("robot", help="robot ARN")
    creds.add_argument("--endpoint", required=True, help="server URL")
    creds.add_argument("--region", help="region to sign for (default: the robot ARN's)")
    creds.add_argument("--profile", help="AWS profile holding the account's keys")
    creds.set_defaults(func=cmd_robot_credentials)

    agent = commands.add_parser("agent", help="run the robot agent (receives and runs deployments)")
    from openrobomaker.agent.__main__ import add_arguments

    add_arguments(agent)
    agent.set_defaults(func=cmd_agent)
