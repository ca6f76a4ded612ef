//! chat-fanout
