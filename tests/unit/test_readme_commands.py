"""The README's two test commands (install with the test extra, run pytest) are the very lines CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_test_commands() -> list[str]:
    """The commands of the first shell block under the README's "Run the tests" heading."""
    section = (ROOT / "README.md").read_text().split("## Run the tests", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def ci_commands() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_readme_installs_the_test_extra_then_runs_pytest():
    install, run = readme_test_commands()
    assert install.startswith("pip install -c constraints.txt -e ") and "[test]" in install
    assert run == "python -m pytest"


def test_ci_runs_the_readmes_test_commands_in_their_order():
    commands = ci_commands()
    install, run = readme_test_commands()
    assert install in commands and run in commands, (install, run)
    assert commands.index(install) < commands.index(run)
    assert commands[-1] == run  # the last thing CI does is the whole suite
