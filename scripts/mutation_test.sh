#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the modules that guard users, each against only the tests that cover it.
#
#   scripts/mutation_test.sh                        # every module below, in full
#   scripts/mutation_test.sh gallery bundle         # some of them
#   scripts/mutation_test.sh 'parity:*__mutmut_1'   # a short run: only the mutants whose name matches the glob
#                                                   # (here the first mutant of every function of parity.py)
#
# Run it before touching one of these modules, and compare its survivors with docs/mutation.md. It works in
# copies of the checkout under $MUTATION_WORKDIR (default /tmp/metaedge-mutation), never in the checkout
# itself, and writes $MUTATION_WORKDIR/report.md: time, score and counts per module, then every surviving
# mutant as a one-line diff. MUTATION_JOBS (default 2) mutants run at a time, under nice -n 10.
# MUTATION_TESTS / MUTATION_PYTEST_ARGS ("|"-separated) replace the test files / extra pytest arguments below,
# e.g. MUTATION_TESTS="tests/test_export.py" MUTATION_PYTEST_ARGS="-k|refused or schema" ... bundle.
# Needs mutmut (pip install -e '.[test]') and metaedge installed (its compiled kernels are linked in).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${MUTATION_WORKDIR:-/tmp/metaedge-mutation}"
JOBS="${MUTATION_JOBS:-2}"
PYTHON="${PYTHON:-python}"

# module -> the test files that cover it. Tests marked slow (SIGKILL of a writer, 40 power cuts, anything that
# trains and exports a model) are left out: they would run for every mutant of a function they touch, a minute
# or more each on 2 cores; the quick tests catch what they catch (docs/mutation.md lists what that leaves).
declare -A TESTS=(
  [gallery]="tests/test_gallery.py tests/test_power_loss.py"
  [bundle]="tests/test_bundle.py tests/test_fuzz.py"
  [parity]="tests/test_parity_compare.py tests/test_parity_gates.py"
  [quantize]="tests/test_quantize.py tests/test_parity_gates.py"
  [open_set]="tests/test_open_set.py"
)
# extra pytest arguments for every run of that module's tests; -x: the first failure is all a mutant needs
declare -A EXTRA=(
  [gallery]="-m|not slow"
  [bundle]="-m|not slow|-k|bundle"  # tampered copies of the shipped bundle and the fuzzed manifests (milliseconds)
  [parity]="-m|not slow|-x"
  [quantize]="-m|not slow|-x"
  [open_set]="-m|not slow|-x"
)

command -v mutmut >/dev/null || { echo "mutmut not found: pip install -e '.[test]'" >&2; exit 1; }
so="$("$PYTHON" -c 'import importlib.util as u; print(u.find_spec("metaedge._C").origin)')" || {
  echo "metaedge is not installed (pip install -e .): its compiled kernels are needed" >&2
  exit 1
}

mkdir -p "$WORK/site"
# The editable install puts a finder ahead of sys.path that maps every metaedge module to the checkout, so the
# mutated copy would never be imported; Python runs sitecustomize at start-up, after .pth files, in every
# process (the tests' subprocesses too), so it can take the finder out again.
cat > "$WORK/site/sitecustomize.py" <<'EOF'
import sys

sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ScikitBuildRedirectingFinder"]
EOF

report="$WORK/report.md"
{
  echo "# Mutation testing report"
  echo
  echo "mutmut $("$PYTHON" -c 'from importlib.metadata import version; print(version("mutmut"))'), $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$REPO" rev-parse --short HEAD)"
  echo "$( [ -n "$(git -C "$REPO" status --porcelain)" ] && echo '(with uncommitted changes), ')$JOBS at a time"
} > "$report"

args=("$@")
[ ${#args[@]} -gt 0 ] || args=(gallery bundle parity quantize open_set)
for arg in "${args[@]}"; do
  module="${arg%%:*}"
  glob=""
  [[ "$arg" == *:* ]] && glob="${arg#*:}"
  [ -n "${TESTS[$module]+set}" ] || { echo "unknown module $module (one of: ${!TESTS[*]})" >&2; exit 1; }
  dest="$WORK/$module"
  rm -rf "$dest"
  mkdir -p "$dest"
  # Tracked and new (not ignored) files as they are now: the copy tests what the developer is about to change.
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf -) \
    | tar -xf - -C "$dest"
  ln -s "$so" "$dest/metaedge/"
  # The tests find the shared data beside the checkout (../shared/data), and mutmut runs them from its copy in
  # $dest/mutants, so the data must appear at $dest/shared: without it the parity and open-set tests skip, and
  # mutmut finds no test for any mutant.
  [ -d "$REPO/../shared" ] && ln -s "$(cd "$REPO/../shared" && pwd)" "$dest/shared"
  # The export target profiles, where an installed wheel has them (metaedge/targets): as files, because mutmut's
  # copy of the package (mutants/) leaves out linked folders, and the checkout's export/ is not copied at all.
  mkdir -p "$dest/metaedge/targets" && cp "$dest"/export/*.json "$dest/metaedge/targets/"
  {
    echo "[mutmut]"
    echo "source_paths=metaedge"
    echo "only_mutate=metaedge/$module.py"
    echo "pytest_add_cli_args_test_selection="
    for t in ${MUTATION_TESTS:-${TESTS[$module]}}; do echo "    $t"; done
    echo "pytest_add_cli_args="
    echo "    -p"
    echo "    no:cacheprovider"
    # one process: mutmut records which tests reach each function in its own process (pyproject asks for xdist)
    echo "    -n"
    echo "    0"
    IFS='|' read -ra extra <<< "${MUTATION_PYTEST_ARGS:-${EXTRA[$module]}}"
    for a in "${extra[@]}"; do echo "    $a"; done
  } > "$dest/setup.cfg"
  # setup.cfg is read only where pyproject.toml has no [tool.mutmut]
  ! grep -q '^\[tool\.mutmut\]' "$dest/pyproject.toml"

  echo "== $module: mutating metaedge/$module.py against ${MUTATION_TESTS:-${TESTS[$module]}} ${glob:+(mutants matching $glob)}"
  start=$SECONDS
  status=0
  # mutmut forks each mutant's test run from a process that has already run torch: a forked child deadlocks in
  # torch's OpenMP thread pool (idle on a futex in the first training step), so one intra-op thread throughout.
  (cd "$dest" && PYTHONPATH="$WORK/site" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 mutmut run --max-children "$JOBS" ${glob:+"metaedge.$module.$glob"}) \
    > "$WORK/$module.log" 2>&1 || status=$?
  elapsed=$((SECONDS - start))
  tail -n 3 "$WORK/$module.log" | tr '\r' '\n' | tail -n 2
  (cd "$dest" && PYTHONPATH="$WORK/site" "$PYTHON" - "$module" "$elapsed" "$status" "$glob" >> "$report") <<'EOF'
"""Summarise one module's mutmut results: counts, score, and each survivor as a one-line diff with its kind."""
import collections
import configparser
import io
import sys
import tokenize
from pathlib import Path

from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code

module, elapsed, status, glob = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
path = Path(f"metaedge/{module}.py")
data = SourceFileMutationData(path=path)
data.load()
results = {name: status_by_exit_code[code] for name, code in data.exit_code_by_key.items()}
counts = collections.Counter(results.values())
checked = {k: v for k, v in results.items() if v not in ("not checked", "skipped")}
caught = sum(v in ("killed", "timeout", "segfault") for v in checked.values())


def tokens(line):
    try:
        return [(t.type, t.string) for t in tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline)
                if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.COMMENT)]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None


def kind(before, after):
    """What the mutation changed: a string, a number, an operator, a name/keyword, or an argument."""
    a, b = tokens(before), tokens(after)
    if a is None or b is None:
        return "other"
    if len(a) != len(b):
        return "argument or call changed" if "None" not in after or "None" in before else "value replaced by None"
    changed = {ta[0] for ta, tb in zip(a, b) if ta != tb}
    names = {tokenize.STRING: "string literal", tokenize.NUMBER: "number", tokenize.OP: "operator",
             tokenize.NAME: "name or keyword"}
    return " + ".join(sorted(names.get(c, "other") for c in changed)) or "other"


survivors = []
for name, result in sorted(results.items()):
    if result not in ("survived", "no tests", "suspicious"):
        continue
    diff = get_diff_for_mutant(name, path=path).splitlines()
    minus = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    plus = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    before, after = (minus[0] if minus else ""), (plus[0] if plus else "")
    survivors.append((name, result, kind(before, after), before.strip(), after.strip()))

print(f"\n## metaedge/{module}.py{f' (mutants matching {glob})' if glob else ''}\n")
settings = configparser.ConfigParser()
settings.read("setup.cfg")
tests, extra = (settings["mutmut"][key].split("\n") for key in ("pytest_add_cli_args_test_selection", "pytest_add_cli_args"))
print(f"Tests: {' '.join(filter(None, tests))}, with pytest arguments {[a for a in extra if a]}.\n")
print(f"{elapsed} s, mutmut exit status {status}. {len(results)} mutants: "
      + ", ".join(f"{n} {s}" for s, n in counts.most_common()) + ".")
if checked:
    print(f"Score: {caught}/{len(checked)} = {caught / len(checked):.1%} killed or timed out (a mutant no selected "
          "test runs counts against it).")
print("\nSurvivors by kind: " + (", ".join(f"{n} {k}" for k, n in
      collections.Counter(s[2] for s in survivors).most_common()) or "none") + ".\n")
for name, result, what, before, after in survivors:
    print(f"- `{name}` ({result}, {what}): `{before[:110]}` -> `{after[:110]}`")
EOF
done
echo "report: $report"
