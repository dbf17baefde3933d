//! The PostgreSQL side: [`setup`] checks the database and creates the publication and
//! slot, [`stream`] opens the replication connection, and [`pgoutput`] decodes what
//! it carries.

pub mod pgoutput;
pub mod setup;
pub mod stream;
