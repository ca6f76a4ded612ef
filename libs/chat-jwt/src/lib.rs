//! chat-jwt
