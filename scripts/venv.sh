# Sourced by scripts/setup.sh and scripts/cuda_wheel_build.sh: ensure_venv DIR PACKAGE==VERSION…
# makes the virtual environment DIR on Debian's Python if it is missing or broken (a creation cut
# short leaves a python without pip), and pip-installs the
# pinned packages it lacks (a local build such as torch's 2.13.0+cpu counts as 2.13.0). A second
# call with nothing missing only reads pip's list.
ensure_venv() {
  local venv=$1
  shift
  if ! "$venv/bin/python" -m pip --version > /dev/null 2>&1; then
    echo "setup: creating $venv"
    /usr/bin/python3 -m venv --clear "$venv"
  fi
  if [ -n "$(missing_pins "$venv" "$@")" ]; then
    echo "setup: installing $* into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored" || true
    local still
    still=$(missing_pins "$venv" "$@")
    [ -z "$still" ] || { echo "setup: pip did not install $still into $venv" >&2; return 1; }
  fi
}

# missing_pins DIR PACKAGE==VERSION…: the pins that DIR's environment does not satisfy, one a line.
missing_pins() {
  local venv=$1
  shift
  normalise() { tr '[:upper:]_' '[:lower:]-' | sed 's/+[^ ]*$//' | sort; }
  comm -23 <(printf '%s\n' "$@" | normalise) <("$venv/bin/python" -m pip freeze --all 2>/dev/null | normalise)
}
