#!/bin/sh
# First start of the PostgreSQL volume only (docker-entrypoint-initdb.d): one server, one database
# per service. POSTGRES_DB (labelloop) is the dataset store; Label Studio and MLflow get their own.
set -eu
for db in labelstudio mlflow; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -c "CREATE DATABASE $db OWNER \"$POSTGRES_USER\""
done
