#!/usr/bin/env python3
"""Checks the TCP connections a running multi-host cluster made against what the NetworkPolicies
in deploy/k8s/base/networkpolicy.yaml allow, so a flow the policies would block in a cluster fails
the test here instead of hanging a pod there.

stdin, one line per socket, from `ss` in each namespace:
  ROLE listen ADDR:PORT          a listening socket of ROLE
  ROLE estab LOCAL:PORT PEER:PORT  an established connection seen from ROLE
ROLE is coordinator, worker or client; argv: IP=ROLE pairs naming every address.

Allowed (the server side is the end that listens on the port):
  client      -> coordinator 50051 (gRPC; HTTP + /metrics 8080 too)
  worker      -> coordinator 50052 (Cluster: registration, rendezvous store)
  coordinator -> worker      50061 (control) and nothing else of the workers'
  worker      -> worker      any port (Gloo pairs listen on ephemeral ports, and close the
                             listening socket once connected, so no direction is checked)
Prints each distinct flow; exit 1 when one is not allowed.
"""
import sys

ALLOWED = {("client", "coordinator"): {50051, 8080},
           ("worker", "coordinator"): {50052},
           ("coordinator", "worker"): {50061}}


def split(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]").replace("::ffff:", ""), int(port)


def main():
    role_of = dict(a.split("=", 1) for a in sys.argv[1:])
    listening = set()  # (ip or '*', port, role)
    estab = []
    for line in sys.stdin:
        f = line.split()
        if not f:
            continue
        if f[1] == "listen":
            host, port = split(f[2])
            listening.add((f[0], port))
        elif f[1] == "estab":
            estab.append((f[0], split(f[2]), split(f[3])))
    flows, bad = set(), []
    for role, (lip, lport), (pip, pport) in estab:
        peer_role = role_of.get(pip)
        if peer_role is None:
            bad.append(f"{role} {lip}:{lport} <-> {pip}:{pport}: peer outside the test's addresses")
            continue
        if role == peer_role == "worker":
            # Gloo closes a pair's listening socket once the pair connected: the direction is
            # unknowable afterwards, and irrelevant, since workers may reach each other anywhere.
            client, server, port = role, peer_role, tuple(sorted([(lip, lport), (pip, pport)]))
        elif (role, lport) in listening:  # we are the server
            client, server, port = peer_role, role, lport
        elif (peer_role, pport) in listening:
            client, server, port = role, peer_role, pport
        else:
            bad.append(f"{role} {lip}:{lport} <-> {pip}:{pport}: neither end listens on its port")
            continue
        flows.add((client, server, port))
    for client, server, port in sorted(flows):
        ok = (client == server == "worker") or port in ALLOWED.get((client, server), set())
        if client == server == "worker":
            (a, pa), (b, pb) = port
            print(f"  ok  worker {a}:{pa} <-> worker {b}:{pb} (Gloo pair, ephemeral ports)")
            continue
        print(f"  {'ok ' if ok else 'BAD'} {client} -> {server}:{port}")
        if not ok:
            bad.append(f"{client} -> {server}:{port} is not allowed by the NetworkPolicies")
    for b in bad:
        print(f"  BAD {b}")
    print(f"flows: {len(flows)} distinct, {len(bad)} not allowed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
