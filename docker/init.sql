-- Runs once when the compose PostgreSQL volume is created.
ALTER ROLE app WITH REPLICATION;
CREATE TABLE accounts (
    id         bigint PRIMARY KEY,
    owner      text NOT NULL,
    balance    numeric(12, 2) NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO accounts SELECT g, 'owner-' || g, 100 FROM generate_series(1, 1000) g;
