// The benchmark's peer: socket.io's documented chat pattern (rooms,
// io.to(room).emit, acknowledgements), one process, nothing persisted.
// chat-bench starts it and drives it with the same scenarios as ours:
//   node server.js [PORT]   -> prints "listening <port>"
// Events (socket.io's own framing over a WebSocket):
//   join  (room, ack)          -> ack("ok")
//   send  ({id, room, text}, ack) -> every member of room gets
//                                    "event" {room, text}; then ack(id)
const http = require("node:http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || 0);
const httpServer = http.createServer({ noDelay: true });
const io = new Server(httpServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  serveClient: false,
  maxHttpBufferSize: 65536,
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    if (typeof room !== "string") return;
    socket.join(room);
    if (typeof ack === "function") ack("ok");
  });
  socket.on("send", (msg, ack) => {
    if (!msg || typeof msg.room !== "string") return;
    io.to(msg.room).emit("event", { room: msg.room, text: msg.text });
    if (typeof ack === "function") ack(msg.id);
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`listening ${httpServer.address().port}`);
});
process.on("SIGTERM", () => process.exit(0));
