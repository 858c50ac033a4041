# Shared by the CI scripts that build a virtual environment of their own (source it).

# find_python 3.12: the path of a python3.12 from pyenv or PATH, or a message and status 1.
find_python() {
  local version=$1 candidate
  for candidate in "$(pyenv root 2>/dev/null)"/versions/"$version"*/bin/python"$version" \
      "$(command -v "python$version" || true)"; do
    if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  echo "$(basename "$0"): no Python $version found (pyenv or python$version on PATH)" >&2
  return 1
}
