#!/usr/bin/python3
"""The ROS services RoboMaker's simulation node offered inside every job (for Debian's /usr/bin/python3).

    /robomaker/job/cancel       robomaker_simulation_msgs/Cancel      -> CancelSimulationJob
    /robomaker/job/add_tags     robomaker_simulation_msgs/AddTags     -> TagResource
    /robomaker/job/list_tags    robomaker_simulation_msgs/ListTags    -> ListTagsForResource
    /robomaker/job/remove_tags  robomaker_simulation_msgs/RemoveTags  -> UntagResource

Each call goes to the RoboMaker API for AWS_ROBOMAKER_SIMULATION_JOB_ARN at AWS_ENDPOINT_URL_ROBOMAKER (the
forwarded endpoint) with the job's credentials, through Debian's boto3. Standalone: no openrobomaker import.
"""

import os
import sys

import rospy
from robomaker_simulation_msgs.msg import Tag
from robomaker_simulation_msgs.srv import (
    AddTags,
    AddTagsResponse,
    Cancel,
    CancelResponse,
    ListTags,
    ListTagsResponse,
    RemoveTags,
    RemoveTagsResponse,
)

JOB_ARN = os.environ.get("AWS_ROBOMAKER_SIMULATION_JOB_ARN")


def make_client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        return None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_ROBOMAKER") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    return boto3.client("robomaker", endpoint_url=endpoint, region_name=region, config=config)


NO_BOTO3 = "boto3 is not installed for /usr/bin/python3 on this host (apt-get install python3-boto3)"
_clients = []


def client():
    """Made on the first service call: importing boto3 and loading its model costs ~0.7 s of CPU, which
    most jobs (that never call these services) should not pay."""
    if not _clients:
        _clients.append(make_client())
    return _clients[0]


def call(operation, **kwargs):
    """(True, response) or (False, message), never raising into rospy."""
    robomaker = client()
    if robomaker is None:
        return False, NO_BOTO3
    try:
        return True, getattr(robomaker, operation)(**kwargs)
    except Exception as exc:
        return False, str(exc)


def on_cancel(_request):
    ok, result = call("cancel_simulation_job", job=JOB_ARN)
    return CancelResponse(success=ok, message="" if ok else result)


def on_add_tags(request):
    if not request.tags:
        return AddTagsResponse(success=False, message="Empty list of tags")
    ok, result = call("tag_resource", resourceArn=JOB_ARN, tags={t.key: t.value for t in request.tags})
    return AddTagsResponse(success=ok, message="" if ok else result)


def on_list_tags(_request):
    ok, result = call("list_tags_for_resource", resourceArn=JOB_ARN)
    if not ok:
        return ListTagsResponse(success=False, message=result)
    tags = [Tag(key=k, value=v) for k, v in sorted((result.get("tags") or {}).items())]
    return ListTagsResponse(success=True, message="", tags=tags)


def on_remove_tags(request):
    if not request.keys:
        return RemoveTagsResponse(success=False, message="Empty list of keys")
    ok, result = call("untag_resource", resourceArn=JOB_ARN, tagKeys=list(request.keys))
    return RemoveTagsResponse(success=ok, message="" if ok else result)


def main():
    if not JOB_ARN:
        print("AWS_ROBOMAKER_SIMULATION_JOB_ARN is not set; not serving /robomaker/job/*", file=sys.stderr)
        return 1
    rospy.init_node("srv", argv=sys.argv + ["__ns:=/robomaker"], disable_signals=False)
    rospy.Service("/robomaker/job/cancel", Cancel, on_cancel)
    rospy.Service("/robomaker/job/add_tags", AddTags, on_add_tags)
    rospy.Service("/robomaker/job/list_tags", ListTags, on_list_tags)
    rospy.Service("/robomaker/job/remove_tags", RemoveTags, on_remove_tags)
    print(f"RoboMaker simulation ROS services ready for {JOB_ARN}", flush=True)
    rospy.spin()
    return 0


if __name__ == "__main__":
    sys.exit(main())
