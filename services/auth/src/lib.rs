//! chat-auth
