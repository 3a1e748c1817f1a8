//! Test services owned by the project: a real Redis server and a real S3-compatible server, each
//! started once per test process on a free loopback port in a temporary directory.

pub mod redis_sentinel;
pub mod redis_server;
pub mod s3_server;
