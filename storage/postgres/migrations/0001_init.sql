-- 0001: the initial schema. Times are Unix nanoseconds (bigint) so they
-- round-trip exactly: the audit hash covers nanoseconds. Zero means unset.

-- Audit: one hash chain per writer. audit_chains holds each chain's head and
-- is updated in the same transaction as the records, so a deleted tail of a
-- chain is detected.
CREATE TABLE audit_chains (
    chain      text COLLATE "C" PRIMARY KEY,
    head_seq   bigint NOT NULL,
    head_hash  bytea  NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_records (
    chain           text COLLATE "C" NOT NULL,
    seq             bigint   NOT NULL,
    id              text     NOT NULL,
    time_ns         bigint   NOT NULL,
    event           text     NOT NULL,
    agent_org       text     NOT NULL,
    agent_team      text     NOT NULL,
    agent_name      text     NOT NULL,
    session_id      text     NOT NULL,
    trace_id        text     NOT NULL,
    span_id         text     NOT NULL,
    kind            smallint NOT NULL,
    payload         bytea    NOT NULL,
    decision        smallint NOT NULL,
    rule_id         text     NOT NULL,
    policy_version  text     NOT NULL,
    mode            smallint NOT NULL,
    shadow_decision smallint NOT NULL,
    reason          text     NOT NULL,
    latency_ns      bigint   NOT NULL,
    prev_hash       bytea    NOT NULL,
    hash            bytea    NOT NULL,
    PRIMARY KEY (chain, seq)
);

-- Every query pages by (time_ns, chain, seq); each filter has an index that
-- ends with that key, so a page is an index range scan in either direction.
CREATE INDEX audit_records_time     ON audit_records (time_ns, chain, seq);
CREATE INDEX audit_records_org      ON audit_records (agent_org, time_ns, chain, seq);
CREATE INDEX audit_records_team     ON audit_records (agent_team, time_ns, chain, seq);
CREATE INDEX audit_records_agent    ON audit_records (agent_name, time_ns, chain, seq);
CREATE INDEX audit_records_decision ON audit_records (decision, time_ns, chain, seq);
CREATE INDEX audit_records_kind     ON audit_records (kind, time_ns, chain, seq);
CREATE INDEX audit_records_event    ON audit_records (event, time_ns, chain, seq) WHERE event <> 'decision';
CREATE INDEX audit_records_trace    ON audit_records (trace_id, time_ns, chain, seq) WHERE trace_id <> '';
CREATE INDEX audit_records_session  ON audit_records (session_id, time_ns, chain, seq) WHERE session_id <> '';

-- The log is append-only: updates, deletes and truncation are refused. The
-- hash chain, not this trigger, is what proves integrity (a superuser can
-- bypass triggers); the trigger stops accidents.
CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_records is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_append_only();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only();

-- audit_advance_head moves a chain's head from (old_seq, old_hash) to
-- (new_seq, new_hash), or fails with SQLSTATE AA409 when the head is no
-- longer where the writer believed it was (another writer appended to the
-- chain). The failure aborts the writer's transaction, records and all.
CREATE FUNCTION audit_advance_head(p_chain text, p_old_seq bigint, p_old_hash bytea, p_new_seq bigint, p_new_hash bytea)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_old_seq = 0 THEN
        INSERT INTO audit_chains (chain, head_seq, head_hash) VALUES (p_chain, p_new_seq, p_new_hash)
        ON CONFLICT (chain) DO NOTHING;
    ELSE
        UPDATE audit_chains SET head_seq = p_new_seq, head_hash = p_new_hash, updated_at = now()
        WHERE chain = p_chain AND head_seq = p_old_seq AND head_hash = p_old_hash;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit chain % moved past record %', p_chain, p_old_seq USING ERRCODE = 'AA409';
    END IF;
END
$$;

-- Agents.
CREATE TABLE agents (
    org           text   NOT NULL,
    team          text   NOT NULL,
    name          text   NOT NULL,
    labels        jsonb,
    public_key    bytea,
    status        text   NOT NULL,
    status_reason text   NOT NULL,
    parent_org    text   NOT NULL,
    parent_team   text   NOT NULL,
    parent_name   text   NOT NULL,
    depth         integer NOT NULL,
    registered_ns bigint NOT NULL,
    last_seen_ns  bigint NOT NULL,
    PRIMARY KEY (org, team, name)
);
CREATE INDEX agents_team ON agents (team);
CREATE INDEX agents_status ON agents (status);

CREATE TABLE nonces (
    nonce      text PRIMARY KEY,
    expires_ns bigint NOT NULL
);

CREATE TABLE revoked_credentials (
    token_id   text PRIMARY KEY,
    expires_ns bigint NOT NULL
);

-- Policies: immutable versions of documents; one active version.
CREATE TABLE policy_versions (
    version      text PRIMARY KEY,
    pos          bigserial NOT NULL UNIQUE,
    author       text   NOT NULL,
    message      text   NOT NULL,
    created_ns   bigint NOT NULL,
    activated_ns bigint NOT NULL
);

CREATE TABLE policy_documents (
    version text    NOT NULL REFERENCES policy_versions (version) ON DELETE CASCADE,
    ord     integer NOT NULL,
    name    text    NOT NULL,
    source  bytea   NOT NULL,
    PRIMARY KEY (version, ord)
);

CREATE TABLE policy_active (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   text NOT NULL REFERENCES policy_versions (version)
);

-- Approvals.
CREATE TABLE approvals (
    id          text PRIMARY KEY,
    decision_id text     NOT NULL,
    agent_org   text     NOT NULL,
    agent_team  text     NOT NULL,
    agent_name  text     NOT NULL,
    kind        smallint NOT NULL,
    payload     bytea,
    rule_id     text     NOT NULL,
    reason      text     NOT NULL,
    status      text     NOT NULL,
    created_ns  bigint   NOT NULL,
    expires_ns  bigint   NOT NULL,
    decided_ns  bigint   NOT NULL,
    decided_by  text     NOT NULL,
    comment     text     NOT NULL
);
CREATE INDEX approvals_status ON approvals (status, created_ns);
CREATE INDEX approvals_team ON approvals (agent_org, agent_team, created_ns);

-- Secrets: sealed (AES-GCM) values; the name is the associated data.
CREATE TABLE secrets (
    name       text PRIMARY KEY,
    sealed     bytea  NOT NULL,
    version    bigint NOT NULL,
    updated_ns bigint NOT NULL
);

-- Counters: windowed budgets and rate counts. A row past expires_ns counts
-- as zero and is reset by the next write.
CREATE TABLE counters (
    key        text PRIMARY KEY,
    value      bigint NOT NULL,
    expires_ns bigint NOT NULL
);
CREATE INDEX counters_expires ON counters (expires_ns);

-- Token buckets: tokens at updated_ns; full_ns is when the bucket is full
-- again, after which the row carries no information and may be swept.
CREATE TABLE token_buckets (
    key        text PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_ns bigint NOT NULL,
    full_ns    bigint NOT NULL
);
CREATE INDEX token_buckets_full ON token_buckets (full_ns);

-- take_token takes one token from bucket p_key, refilled at p_rate tokens
-- per second up to p_burst, at time p_now_ns (the caller's clock). The row
-- lock makes it atomic across replicas. A new bucket starts full; time going
-- backwards (replicas' clocks differ) refills nothing. ok is false when the
-- bucket is empty, and wait_ns is then the time until the next token.
CREATE FUNCTION take_token(p_key text, p_rate double precision, p_burst bigint, p_now_ns bigint,
                           OUT ok boolean, OUT wait_ns bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_tokens double precision;
    v_last   bigint;
BEGIN
    SELECT tokens, updated_ns INTO v_tokens, v_last FROM token_buckets WHERE key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO token_buckets (key, tokens, updated_ns, full_ns)
        VALUES (p_key, p_burst, p_now_ns, p_now_ns)
        ON CONFLICT (key) DO NOTHING;
        SELECT tokens, updated_ns INTO v_tokens, v_last FROM token_buckets WHERE key = p_key FOR UPDATE;
    END IF;
    IF p_now_ns > v_last THEN
        v_tokens := least(p_burst::double precision,
                          v_tokens + (p_now_ns - v_last)::double precision / 1e9::double precision * p_rate);
        v_last := p_now_ns;
    END IF;
    ok := v_tokens >= 1 - 1e-9::double precision;
    IF ok THEN
        v_tokens := greatest(0::double precision, v_tokens - 1);
        wait_ns := 0;
    ELSE
        wait_ns := ceil((1 - v_tokens) / p_rate * 1e9::double precision)::bigint;
    END IF;
    UPDATE token_buckets
       SET tokens = v_tokens,
           updated_ns = v_last,
           full_ns = v_last + ((p_burst - v_tokens) / p_rate * 1e9::double precision)::bigint
     WHERE key = p_key;
END
$$;
