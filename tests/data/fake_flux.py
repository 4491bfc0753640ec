#!/usr/bin/env python3
"""A stand-in for the `flux` command, to test the plugin's process handling.

It logs each call to $FAKE_FLUX_LOG, and:
  version             prints a flux-core version line
  start [-o...] CMD   runs CMD with FLUX_URI set (FAKE_FLUX_HANG=1: ignores stdin EOF)
  module ...          fails when an argument is "fail"
  python -c S ARGS    prints a canned JSON answer for ARGS[0] (the topic) and the payload on stdin
  dmesg               prints two timestamped lines
"""

import json
import os
import sys
import time

args = sys.argv[1:]
with open(os.environ.get("FAKE_FLUX_LOG", os.devnull), "a") as log:
    log.write(json.dumps({"args": args, "uri": os.environ.get("FLUX_URI"),
                          "userid": os.environ.get("FLUX_HANDLE_USERID")}) + "\n")

if args[0] == "version":
    print("commands:    \t\t0.88.0")
elif args[0] == "start":
    i = 1
    while args[i].startswith("-"):
        i += 1
    os.environ["FLUX_URI"] = "local:///tmp/fake-flux"
    if os.environ.get("FAKE_FLUX_HANG"):
        print(os.environ["FLUX_URI"], flush=True)
        while True:
            time.sleep(1)
    os.execvp(args[i], args[i:])
elif args[0] in ("module", "exec"):
    if "fail" in args:
        print("flux-module: load fail: Invalid argument", file=sys.stderr)
        sys.exit(1)
elif args[0] == "python":
    topic = args[3]
    if topic.endswith("error"):
        print(json.dumps([{"errno": 2, "error": "No such file or directory"}]))
    else:
        payload = json.loads(sys.stdin.read())  # the client reads the payload from stdin
        print(json.dumps([{"payload": json.dumps({"topic": topic, "payload": payload})}]))
elif args[0] == "dmesg":
    print("2026-11-28T01:00:00.000000Z broker.info[0]: hello")
    print("2026-11-28T01:00:01.000000Z mymod.err[0]: oops")
