//! The replica's PostgreSQL connections: a pool whose connections keep their prepared statements.
//!
//! Every statement the replica runs is one of a few fixed SQL texts, run again and again (a batch to apply, a
//! slice of the log to read, on every link). Preparing a statement costs a round trip and a parse and plan on the
//! server, so each pooled connection ([`Conn`]) prepares each text once, on first use, and keeps the prepared
//! statement for as long as it lives. A statement the server no longer accepts in its cached form (a migration
//! changed a table it reads: `cached plan must not change result type`) fails once, and empties the connection's
//! cache, so the next use prepares it afresh.
//!
//! A connection is checked out of the pool without a round trip when it was used successfully in the last
//! [`CHECK_IDLE`]; one idle for longer is checked with an empty query first, as the standard manager does on
//! every checkout. A connection that failed at the socket level is dropped when it returns to the pool.

use postgres::types::ToSql;
use postgres::{Client, Row, Statement};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A connection idle for longer than this is checked (an empty query) before it is handed out again.
pub const CHECK_IDLE: Duration = Duration::from_secs(1);

/// Prepared statements, by their SQL text.
type Statements = HashMap<&'static str, Statement>;

/// A pooled connection and its prepared statements.
pub struct Conn {
    client: Client,
    statements: Statements,
    /// When a statement last succeeded on this connection.
    last_ok: Instant,
}

/// Parameters of a statement.
pub type Params<'p> = [&'p (dyn ToSql + Sync)];

/// `sql`, prepared on `client` once and then taken from `statements`.
fn prepared(
    statements: &mut Statements,
    sql: &'static str,
    prepare: impl FnOnce(&str) -> Result<Statement, postgres::Error>,
) -> Result<Statement, postgres::Error> {
    if let Some(s) = statements.get(sql) {
        return Ok(s.clone());
    }
    let s = prepare(sql)?;
    statements.insert(sql, s.clone());
    Ok(s)
}

/// Notes the outcome of a statement: a success keeps the connection fresh; an error that says a cached
/// statement went stale empties the cache.
fn outcome<T>(
    r: Result<T, postgres::Error>,
    statements: &mut Statements,
    last_ok: &mut Instant,
) -> Result<T, postgres::Error> {
    match &r {
        Ok(_) => *last_ok = Instant::now(),
        Err(e) => {
            use postgres::error::SqlState;
            let stale = [SqlState::FEATURE_NOT_SUPPORTED, SqlState::INVALID_SQL_STATEMENT_NAME];
            if e.code().is_some_and(|c| stale.contains(c)) {
                statements.clear();
            }
        }
    }
    r
}

impl Conn {
    /// Run `sql` (prepared once per connection), returning its rows.
    pub fn query(&mut self, sql: &'static str, params: &Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let client = &mut self.client;
        let r = prepared(&mut self.statements, sql, |q| client.prepare(q)).and_then(|s| client.query(&s, params));
        outcome(r, &mut self.statements, &mut self.last_ok)
    }

    /// Run `sql`, returning its one row or none.
    pub fn query_opt(&mut self, sql: &'static str, params: &Params<'_>) -> Result<Option<Row>, postgres::Error> {
        let client = &mut self.client;
        let r = prepared(&mut self.statements, sql, |q| client.prepare(q)).and_then(|s| client.query_opt(&s, params));
        outcome(r, &mut self.statements, &mut self.last_ok)
    }

    /// Run `sql`, returning its one row.
    pub fn query_one(&mut self, sql: &'static str, params: &Params<'_>) -> Result<Row, postgres::Error> {
        let client = &mut self.client;
        let r = prepared(&mut self.statements, sql, |q| client.prepare(q)).and_then(|s| client.query_one(&s, params));
        outcome(r, &mut self.statements, &mut self.last_ok)
    }

    /// Run `sql`, returning the number of rows it touched.
    pub fn execute(&mut self, sql: &'static str, params: &Params<'_>) -> Result<u64, postgres::Error> {
        let client = &mut self.client;
        let r = prepared(&mut self.statements, sql, |q| client.prepare(q)).and_then(|s| client.execute(&s, params));
        outcome(r, &mut self.statements, &mut self.last_ok)
    }

    /// Begin a transaction on this connection; its statements share the connection's cache.
    pub fn transaction(&mut self) -> Result<Tx<'_>, postgres::Error> {
        let Conn { client, statements, last_ok } = self;
        let tx = client.transaction()?;
        Ok(Tx { tx, statements, last_ok })
    }

    /// The connection itself, for statements run once (migrations).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// A transaction on a [`Conn`], with its prepared statements. Dropped without [`Tx::commit`], it rolls back.
pub struct Tx<'c> {
    tx: postgres::Transaction<'c>,
    statements: &'c mut Statements,
    last_ok: &'c mut Instant,
}

impl Tx<'_> {
    /// Run `sql` (prepared once per connection), returning its rows.
    pub fn query(&mut self, sql: &'static str, params: &Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let tx = &mut self.tx;
        let r = prepared(self.statements, sql, |q| tx.prepare(q)).and_then(|s| tx.query(&s, params));
        outcome(r, self.statements, self.last_ok)
    }

    /// Run `sql`, returning its one row or none.
    pub fn query_opt(&mut self, sql: &'static str, params: &Params<'_>) -> Result<Option<Row>, postgres::Error> {
        let tx = &mut self.tx;
        let r = prepared(self.statements, sql, |q| tx.prepare(q)).and_then(|s| tx.query_opt(&s, params));
        outcome(r, self.statements, self.last_ok)
    }

    /// Run `sql`, returning its one row.
    pub fn query_one(&mut self, sql: &'static str, params: &Params<'_>) -> Result<Row, postgres::Error> {
        let tx = &mut self.tx;
        let r = prepared(self.statements, sql, |q| tx.prepare(q)).and_then(|s| tx.query_one(&s, params));
        outcome(r, self.statements, self.last_ok)
    }

    /// Run `sql`, returning the number of rows it touched.
    pub fn execute(&mut self, sql: &'static str, params: &Params<'_>) -> Result<u64, postgres::Error> {
        let tx = &mut self.tx;
        let r = prepared(self.statements, sql, |q| tx.prepare(q)).and_then(|s| tx.execute(&s, params));
        outcome(r, self.statements, self.last_ok)
    }

    /// Commit the transaction.
    pub fn commit(self) -> Result<(), postgres::Error> {
        let r = self.tx.commit();
        outcome(r, self.statements, self.last_ok)
    }
}

/// Opens [`Conn`]s for the pool.
#[derive(Debug)]
pub struct Manager {
    config: postgres::Config,
}

impl Manager {
    /// Connections to the database `config` names (without TLS: the relay and its database share a network).
    pub fn new(config: postgres::Config) -> Manager {
        Manager { config }
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        let client = self.config.connect(postgres::NoTls)?;
        Ok(Conn { client, statements: HashMap::new(), last_ok: Instant::now() })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        if conn.last_ok.elapsed() < CHECK_IDLE && !conn.client.is_closed() {
            return Ok(());
        }
        conn.client.simple_query("")?;
        conn.last_ok = Instant::now();
        Ok(())
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.client.is_closed()
    }
}
