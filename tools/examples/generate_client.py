#!/usr/bin/python3
"""A small Python client of a sambay-serve cluster (sambay.v1.Generation on sambay-router).

Streams the generated text to stdout as it arrives, then prints a usage summary on stderr.
Uses Debian's python3-grpcio and python3-protobuf (run it with /usr/bin/python3) and the stubs
the build writes to <build>/python (target python_stubs).

    /usr/bin/python3 tools/examples/generate_client.py --stubs build/python \\
        --address 127.0.0.1:50050 --prompt "Hello" --max-new-tokens 32 --seed 1
    /usr/bin/python3 tools/examples/generate_client.py --stubs build/python --health

Exit codes: 0 ok, 1 an RPC failed (the error is printed as "generate_client: error: CODE:
message"), 2 bad arguments or missing stubs, 5 --health and not SERVING (or unreachable).
"""

import argparse
import os
import sys

READINESS_SERVICE = "sambay.v1.Generation"


def default_stubs():
    """$SAMBAY_PYTHON_STUBS, else build/python next to this checkout."""
    env = os.environ.get("SAMBAY_PYTHON_STUBS")
    if env:
        return env
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(repo, "build", "python")


def parse_args():
    p = argparse.ArgumentParser(description="Stream a generation from a sambay-serve router.")
    p.add_argument("--address", default=os.environ.get("SAMBAY_ADDRESS", "127.0.0.1:50050"),
                   help="router host:port (default $SAMBAY_ADDRESS or 127.0.0.1:50050)")
    p.add_argument("--stubs", default=default_stubs(),
                   help="folder of the generated stubs (default $SAMBAY_PYTHON_STUBS or "
                        "build/python)")
    p.add_argument("--prompt", default="Hello", help="prompt text")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (default: server's)")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    p.add_argument("--health", action="store_true",
                   help="only check readiness (service %s): exit 0 when SERVING" %
                        READINESS_SERVICE)
    return p.parse_args()


def main():
    args = parse_args()
    if not os.path.isfile(os.path.join(args.stubs, "sambay", "v1", "generate_pb2.py")):
        print("generate_client: error: no stubs in %s (build the python_stubs target, or pass "
              "--stubs)" % args.stubs, file=sys.stderr)
        return 2
    sys.path.insert(0, args.stubs)
    import grpc  # noqa: E402  (Debian python3-grpcio)
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
    from sambay.v1 import generate_pb2, generate_pb2_grpc  # noqa: E402

    channel = grpc.insecure_channel(args.address)
    try:
        if args.health:
            health = health_pb2_grpc.HealthStub(channel)
            resp = health.Check(health_pb2.HealthCheckRequest(service=READINESS_SERVICE),
                                timeout=args.timeout)
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            print(name)
            return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 5

        stub = generate_pb2_grpc.GenerationStub(channel)
        sampling = generate_pb2.SamplingParams(temperature=args.temperature)
        if args.seed is not None:
            sampling.seed = args.seed
        request = generate_pb2.GenerateRequest(
            text=args.prompt,
            sampling=sampling,
            stopping=generate_pb2.StoppingCriteria(max_new_tokens=args.max_new_tokens))
        ids, usage, finish, request_id = [], None, None, ""
        for msg in stub.Generate(request, timeout=args.timeout):
            request_id = msg.request_id or request_id
            ids.extend(msg.token_ids)
            if msg.text:
                sys.stdout.write(msg.text)
                sys.stdout.flush()
            if msg.finish_reason != generate_pb2.FINISH_REASON_UNSPECIFIED:
                finish = generate_pb2.FinishReason.Name(msg.finish_reason).replace(
                    "FINISH_REASON_", "")
            if msg.HasField("usage"):
                usage = msg.usage
        sys.stdout.write("\n")
        sys.stdout.flush()
        if usage is None:
            print("generate_client: request %s finish %s (no usage)" % (request_id, finish),
                  file=sys.stderr)
        else:
            print("generate_client: request %s finish %s prompt_tokens %d completion_tokens %d "
                  "ttft %.3f s decode %.3f s transfer %d bytes workers %s ids %s" % (
                      request_id, finish, usage.prompt_tokens, usage.completion_tokens,
                      usage.time_to_first_token_seconds, usage.decode_seconds,
                      usage.transfer_bytes, ",".join(usage.workers) or "-",
                      ",".join(str(i) for i in ids)), file=sys.stderr)
        return 0
    except grpc.RpcError as e:
        print("generate_client: error: %s: %s" % (e.code().name, e.details()), file=sys.stderr)
        return 5 if args.health else 1
    finally:
        channel.close()


if __name__ == "__main__":
    sys.exit(main())
