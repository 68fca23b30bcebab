-- The alerts feed, its silences and the daily cost ledger.
CREATE TABLE alerts (
	id         text    PRIMARY KEY,
	time_ns    bigint NOT NULL,
	kind       text    NOT NULL,
	severity   text    NOT NULL,
	org        text    NOT NULL,
	team       text    NOT NULL,
	agent      text    NOT NULL,
	summary    text    NOT NULL,
	details    text    NOT NULL,
	source     text    NOT NULL,
	silence_id text    NOT NULL
);
CREATE INDEX alerts_time ON alerts (time_ns DESC, id DESC);

CREATE TABLE alert_silences (
	id           text    PRIMARY KEY,
	kind         text    NOT NULL,
	severity     text    NOT NULL,
	agent_prefix text    NOT NULL,
	starts_ns    bigint NOT NULL,
	ends_ns      bigint NOT NULL,
	comment      text    NOT NULL,
	created_by   text    NOT NULL,
	created_ns   bigint NOT NULL
);

CREATE TABLE cost_daily (
	day               text    NOT NULL,
	org               text    NOT NULL,
	team              text    NOT NULL,
	agent             text    NOT NULL,
	model             text    NOT NULL,
	micro_usd         bigint NOT NULL,
	prompt_tokens     bigint NOT NULL,
	completion_tokens bigint NOT NULL,
	requests          bigint NOT NULL,
	PRIMARY KEY (day, org, team, agent, model)
);
