#!/usr/bin/python3
"""A small Python client of a sambay-serve cluster (sambay.v1.Generation on sambay-router).

Streams the generated text to stdout as it arrives, then prints a usage summary on stderr.
Uses Debian's python3-grpcio and python3-protobuf (run it with /usr/bin/python3) and the stubs
the build writes to <build>/python (target python_stubs).

    /usr/bin/python3 tools/examples/generate_client.py --stubs build/python \\
        --address 127.0.0.1:50050 --prompt "Hello" --max-new-tokens 32 --seed 1
    /usr/bin/python3 tools/examples/generate_client.py --stubs build/python --health
    SAMBAY_API_KEY=KEY /usr/bin/python3 tools/examples/generate_client.py --stubs build/python \\
        --tls-ca ca.pem --tls-cert client.pem --tls-key client.key --prompt "Hello"

TLS and the API key work as in sambay-client (docs/client.md): --tls-ca (or --tls for the
system roots) turns TLS on, --tls-cert/--tls-key present a client certificate (mTLS),
--tls-server-name overrides the name checked in the server's certificate, and --api-key is sent
as the metadata "authorization: Bearer KEY" with every call. Each defaults to its SAMBAY_*
variable (SAMBAY_TLS_CA, SAMBAY_TLS_CERT, SAMBAY_TLS_KEY, SAMBAY_TLS_SERVER_NAME, SAMBAY_API_KEY,
SAMBAY_TLS=1), as deploy/local/cluster.sh --secure --run sets them. The key is never printed.

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
    env = os.environ.get
    p.add_argument("--tls", action="store_true",
                   default=env("SAMBAY_TLS", "").lower() in ("1", "true", "yes"),
                   help="TLS, verifying the server against the system roots ($SAMBAY_TLS)")
    p.add_argument("--tls-ca", default=env("SAMBAY_TLS_CA", ""),
                   help="PEM CA bundle to verify the server against; turns TLS on "
                        "($SAMBAY_TLS_CA)")
    p.add_argument("--tls-cert", default=env("SAMBAY_TLS_CERT", ""),
                   help="PEM client certificate (mTLS, with --tls-key); turns TLS on "
                        "($SAMBAY_TLS_CERT)")
    p.add_argument("--tls-key", default=env("SAMBAY_TLS_KEY", ""),
                   help="PEM private key of --tls-cert ($SAMBAY_TLS_KEY)")
    p.add_argument("--tls-server-name", default=env("SAMBAY_TLS_SERVER_NAME", ""),
                   help="the name the server's certificate must carry (default: the host of "
                        "--address; $SAMBAY_TLS_SERVER_NAME)")
    p.add_argument("--api-key", default=env("SAMBAY_API_KEY", ""),
                   help="API key, sent as 'authorization: Bearer KEY' ($SAMBAY_API_KEY, which "
                        "keeps it off the command line; never printed)")
    return p.parse_args()


class ArgumentError(Exception):
    """A bad argument; the message names it."""


def read_pem(flag, path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ArgumentError("%s: %s: cannot read the file (%s)" % (flag, path, e.strerror))
    if not data:
        raise ArgumentError("%s: %s: the file is empty" % (flag, path))
    return data


def make_channel(grpc, args):
    """An insecure channel, or with --tls/--tls-ca/--tls-cert a TLS one."""
    if any(c < "!" or c > "~" for c in args.api_key):
        raise ArgumentError("--api-key: must be printable ASCII without spaces (not shown)")
    if bool(args.tls_cert) != bool(args.tls_key):
        missing, given = ("--tls-key", "--tls-cert") if args.tls_cert else ("--tls-cert",
                                                                            "--tls-key")
        raise ArgumentError("%s: required with %s" % (missing, given))
    if not (args.tls or args.tls_ca or args.tls_cert):
        if args.tls_server_name:
            raise ArgumentError("--tls-server-name: only with TLS (--tls, --tls-ca or "
                                "--tls-cert/--tls-key)")
        return grpc.insecure_channel(args.address)
    creds = grpc.ssl_channel_credentials(
        root_certificates=read_pem("--tls-ca", args.tls_ca) if args.tls_ca else None,
        private_key=read_pem("--tls-key", args.tls_key) if args.tls_key else None,
        certificate_chain=read_pem("--tls-cert", args.tls_cert) if args.tls_cert else None)
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(args.address, creds, options=options)


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

    try:
        channel = make_channel(grpc, args)
    except ArgumentError as e:
        print("generate_client: error: %s" % e, file=sys.stderr)
        return 2
    # The API key travels as per-call metadata (it also works on a plaintext channel).
    metadata = (("authorization", "Bearer " + args.api_key),) if args.api_key else None
    try:
        if args.health:
            health = health_pb2_grpc.HealthStub(channel)
            resp = health.Check(health_pb2.HealthCheckRequest(service=READINESS_SERVICE),
                                timeout=args.timeout, metadata=metadata)
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
        for msg in stub.Generate(request, timeout=args.timeout, metadata=metadata):
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
