#!/usr/bin/env bash
# Set up distill-guided: Fashion-MNIST from Debian (the default dataset, offline), then the Python
# packages. The same line works as root without sudo (Docker, CI runners, cloud notebooks) and
# as a desktop user with sudo; without apt-get (macOS, Fedora, ...) the data step is skipped and
# the first run downloads Fashion-MNIST through torchvision instead.
#
#   bash setup.sh              # what python stage2.py needs
#   bash setup.sh --tests      # + the text extra and the 20 ImageNet photos the tests use
#   bash setup.sh --dry-run    # print the commands it would run, run nothing
#
# FASHION_DIR (default /usr/share/datasets/fashion-mnist) is where Debian puts the data; PYTHON
# (default python) is the interpreter whose pip installs the packages.
set -euo pipefail
cd "$(dirname "$0")"

tests=0 dry=0
for arg in "$@"; do
  case "$arg" in
    --tests) tests=1 ;;
    --dry-run) dry=1 ;;
    *) echo "setup.sh: unknown option '$arg'; use --tests and/or --dry-run" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python}"
fashion="${FASHION_DIR:-/usr/share/datasets/fashion-mnist}"

run() {  # print a command, then run it (unless --dry-run)
  echo "+ $*"
  if [ "$dry" = 0 ]; then "$@"; fi
}

# 1. Fashion-MNIST: Debian's package, with sudo only where we are not root.
if [ -f "$fashion/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST: found in $fashion"
elif ! command -v apt-get >/dev/null; then
  echo "Fashion-MNIST: no apt-get here; the first run downloads it into ./data (torchvision)"
else
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null; then
    as_root=(sudo)
  else
    echo "setup.sh: installing dataset-fashion-mnist needs root; run as root or install sudo" >&2
    exit 2
  fi
  run "${as_root[@]}" apt-get update -qq
  run "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    dataset-fashion-mnist
fi

# 2. The Python packages (the torch pin is in requirements.txt), in one resolve.
if [ "$tests" = 1 ]; then
  run "$python" -m pip install -q -r requirements.txt -r requirements-text.txt
  # Test data only: 20 labelled ImageNet photos inside foolbox's wheel (its code is never run).
  run "$python" -m pip install -q --no-deps foolbox==3.3.4
else
  run "$python" -m pip install -q -r requirements.txt
fi
