# Sourced by the scripts that fetch Debian packages of other suites (trixie,
# sid) without touching the system's apt: `private_apt_opts DIR` sets the
# array `apt_opts` so that apt-get uses DIR/sources.list, DIR/lists and
# DIR/cache only, ignores the system's sources, preferences and what this
# machine has installed (which must never be the candidate).
private_apt_opts() {
    local apt=$1
    apt_opts=(
        -o "Dir::Etc::sourcelist=$apt/sources.list"
        -o "Dir::Etc::sourceparts=$apt/empty.d"
        -o "Dir::State::Lists=$apt/lists"
        -o "Dir::Cache=$apt/cache"
        -o "Dir::Etc::preferencesparts=$apt/empty.d"
        -o "Dir::Etc::preferences=/dev/null"
        -o "Dir::State::status=/dev/null"
        -o "APT::Get::List-Cleanup=0"
        -o "Acquire::Retries=2"
    )
}
