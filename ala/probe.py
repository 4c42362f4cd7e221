"""`python -m ala.probe [PORT] [PATH]`: exit 0 if a service's health endpoint answers 200, else 1.

The container healthcheck and anything else that must ask without curl or ALA's heavy imports (this module needs
only the standard library). PORT defaults to `ALA_HEALTH_PORT`, PATH to `/readyz`.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe(port: int, path: str = "/readyz", host: str = "127.0.0.1", timeout_s: float = 2.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout_s) as response:
            return response.status == 200, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return False, error.read().decode(errors="replace")
    except OSError as error:
        return False, str(error)


def main(argv: list[str]) -> int:
    port = int(argv[1]) if len(argv) > 1 else int(os.environ.get("ALA_HEALTH_PORT", "0"))
    path = argv[2] if len(argv) > 2 else "/readyz"
    if not port:
        print("no port: pass one or set ALA_HEALTH_PORT", file=sys.stderr)
        return 1
    healthy, body = probe(port, path)
    print(body)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
