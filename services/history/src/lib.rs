//! chat-history
