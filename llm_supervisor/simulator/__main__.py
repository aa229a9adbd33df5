import sys

from llm_supervisor.simulator.main import main

if __name__ == "__main__":
    sys.exit(main())
