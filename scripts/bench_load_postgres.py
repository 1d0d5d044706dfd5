"""`opsagent bench load` on a throwaway PostgreSQL server (tests/postgres.py: Debian's postgresql,
initdb + pg_ctl in a temp folder, removed afterwards). Arguments go to `bench load`, e.g.
    PYTHONPATH=. python scripts/bench_load_postgres.py --cases 1000 --rate 4 --report r.md
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.postgres from this checkout

if __name__ == "__main__":
    from opsagent.cli import main
    from tests.postgres import PostgresServer, find_bin

    bindir = find_bin()
    if bindir is None:
        sys.exit("PostgreSQL is not installed (scripts/setup.sh installs Debian's postgresql)")
    server = PostgresServer(bindir)
    try:
        url = server.new_database("bench")
        print(f"state: {url}", flush=True)
        code = main(["bench", "load", *sys.argv[1:], "--state", url])
    finally:
        server.stop()
    sys.exit(code)
