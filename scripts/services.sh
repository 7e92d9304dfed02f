#!/usr/bin/env bash
# Installs what the tests need beyond Rust and the Python environment, when missing, and
# starts the services they talk to. Idempotent; `make test` runs it on every machine, since
# CI's machine may be bare.
#   - Debian: cmake + libcurl4-openssl-dev (librdkafka's cmake build includes curl.h even
#     with curl off), chromium + chromium-driver (the browser test)
#   - tansu 0.6.0, the Kafka-protocol broker (cargo install, ~12 min cold, cached)
#   - moto_server for the S3 image-store test, in its own virtualenv
#   - MariaDB on 127.0.0.1:3306 (root, empty password), started if it is not answering
set -euo pipefail
CACHE=${CACHE:-$HOME/.cache/partialconv}

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
[ -f /usr/include/curl/curl.h ] || [ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || need_apt+=(libcurl4-openssl-dev)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
    echo "apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

TANSU=$CACHE/tools/bin/tansu
if [ ! -x "$TANSU" ]; then
    echo "installing tansu 0.6.0 (about 12 minutes, once)"
    CARGO_TARGET_DIR=$CACHE/target-tansu cargo install tansu --version 0.6.0 \
        --features dynostore,libsql --locked --root "$CACHE/tools"
fi

MOTO=$CACHE/venv-moto/bin/moto_server
if [ ! -x "$MOTO" ]; then
    python3 -m venv "$CACHE/venv-moto"
    "$CACHE/venv-moto/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5'
fi

if ! mysql -uroot -h127.0.0.1 -e 'select 1' >/dev/null 2>&1; then
    echo "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    for _ in $(seq 60); do
        mysql -uroot -h127.0.0.1 -e 'select 1' >/dev/null 2>&1 && break
        sleep 1
    done
    mysql -uroot -h127.0.0.1 -e 'select 1' >/dev/null
fi
echo "services ready: tansu $TANSU, moto $MOTO, MariaDB 127.0.0.1:3306"
