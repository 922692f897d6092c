// wschat browser client: the extended dialect of docs/protocol.md.
//
// Rules this file keeps: text from the network or the user is only ever put
// into the page as text nodes (textContent, never parsed as HTML), and a message the user
// typed is never dropped silently: it stays in the outbox until the server
// sequenced it, or is shown as "not sent" with a retry button.
'use strict';

(() => {
  const PING_EVERY = 15000;
  const PONG_TIMEOUT = 10000; // also bounds how long a connect may take
  const BACKOFF_MIN = 250;
  const BACKOFF_MAX = 10000;
  const KEEP_PER_ROOM = 1000; // messages kept in memory per room
  const NICK_KEY = 'wschat.nick';

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'), conn: $('conn-state'), instance: $('instance'), instanceLabel: $('instance-label'),
    me: $('me'), meNick: $('me-nick'), logout: $('logout'),
    login: $('login'), loginForm: $('login-form'), nick: $('nick-input'), loginError: $('login-error'),
    chat: $('chat'), joinForm: $('join-form'), room: $('room-input'), joinError: $('join-error'),
    roomList: $('room-list'), roomTitle: $('room-title'), leave: $('leave'), notice: $('room-notice'),
    list: $('messages'), sendForm: $('send-form'), input: $('message-input'), send: $('send'),
    sendError: $('send-error'), members: $('members'), memberCount: $('member-count'),
  };

  const randomHex = (n) => Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => b.toString(16).padStart(2, '0')).join('');
  // A per-tab random prefix makes our message ids recognisable in history
  // recovered after a reconnect, when our member id has changed.
  const tab = randomHex(6);
  let counter = 0;
  const newId = (kind) => kind + tab + '.' + (++counter).toString(36);
  // The session (hello's) makes the server recognise a chat re-sent with
  // the same id after a reconnect, so unacknowledged chats are simply sent
  // again. It is secret (not the ids' prefix: every member sees those) and
  // lives as long as this page, like the outbox and the id counter: kept
  // in sessionStorage it would outlive both (a reload would number ids
  // from 1 again under the same session, and the server would take the
  // new messages for re-sends), and a duplicated tab would share it.
  const session = randomHex(16);

  const state = {
    nick: '',
    user: '', // the token's, from welcome ('' when anonymous)
    refreshedFor: 0, // the expiry the last refresh answered
    stopped: true, // no connection wanted (before login, while changing nick)
    ws: null,
    ready: false, // welcome received on ws
    draining: false, // the instance said it is shutting down
    attempt: 0,
    everConnected: false,
    timers: { retry: 0, ping: 0, pong: 0, flush: 0 },
    pingId: '',
    memberId: '',
    myIds: new Set(),
    limits: { max_message_bytes: 4096, rate_per_second: 20, rate_burst: 40, history: 50 },
    tokens: 0,
    refillAt: 0,
    rooms: new Map(), // name -> room, in join order
    active: '',
    outbox: [], // {cid, room, text, state: queued|sent|acked|failed, error, seq}
    requests: new Map(), // request id -> {kind, room}
  };

  const newRoom = (name) => ({
    name, joined: false, msgs: [], lastSeq: 0, atStart: false, loading: false, unread: 0,
    members: new Map(), notice: '', epoch: '',
  });
  const current = () => state.rooms.get(state.active);

  function h(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function button(text, onClick, cls) {
    const b = h('button', cls, text);
    b.type = 'button';
    b.addEventListener('click', onClick);
    return b;
  }

  // ---- connection ----

  function wsURL() {
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  }

  function setConn(s) {
    ui.conn.textContent = s;
    ui.conn.dataset.state = s;
  }

  // The instance label shows only while connected: an empty one reads
  // like an error.
  function setInstance(name) {
    ui.instance.textContent = name;
    ui.instanceLabel.hidden = !name;
  }

  // The token hook: before each connection the page asks its own origin
  // for a token, GET /auth/token?user=<nick> with the page's cookies,
  // expecting {"token": "…"}. A deployment that authenticates its users
  // routes that path to its sign-in service (SECURITY.md); ws-user answers
  // it itself only with AUTH_DEV_TOKENS (development). 404, the default,
  // connects anonymously. The token goes in hello, not in the URL, so that
  // no proxy logs it.
  async function getToken() {
    const r = await fetch('/auth/token?user=' + encodeURIComponent(state.nick), { cache: 'no-store', credentials: 'same-origin' });
    if (r.status === 404) return '';
    if (!r.ok) throw new Error('HTTP ' + r.status);
    const body = await r.json();
    return typeof body.token === 'string' ? body.token : '';
  }

  async function connect() {
    clearTimeout(state.timers.retry);
    if (state.stopped) return;
    setConn(state.everConnected ? 'reconnecting' : 'connecting');
    let token = '';
    try {
      token = await getToken();
    } catch (err) {
      showError('Could not get a sign-in token (' + err.message + '); retrying');
      scheduleReconnect();
      return;
    }
    if (state.stopped || state.ws) return;
    let ws;
    try {
      ws = new WebSocket(wsURL());
    } catch (err) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    // An open that never completes, or a welcome that never comes, counts
    // as a dead connection too.
    state.timers.pong = setTimeout(() => dropped(ws, 4000, 'connect timeout'), PONG_TIMEOUT);
    ws.addEventListener('open', () => {
      const hello = { type: 'hello', nick: state.nick, session, id: newId('h') };
      if (token) hello.token = token;
      if (ws === state.ws) ws.send(JSON.stringify(hello));
    });
    ws.addEventListener('message', (ev) => {
      if (ws !== state.ws) return;
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch (err) {
        return;
      }
      if (f && typeof f === 'object') handle(f);
    });
    ws.addEventListener('close', (ev) => dropped(ws, ev.code, ev.reason));
  }

  // dropped forgets ws (later events of it are ignored) and plans the next
  // attempt. It does not wait for a close handshake: a half-open
  // connection may never finish one.
  function dropped(ws, code, reason) {
    if (ws !== state.ws) return;
    state.ws = null;
    state.ready = false;
    clearTimeout(state.timers.pong);
    clearInterval(state.timers.ping);
    clearTimeout(state.timers.flush);
    try {
      ws.close();
    } catch (err) { /* already closed */ }
    setInstance('');
    state.requests.clear();
    for (const r of state.rooms.values()) {
      r.joined = false;
      r.loading = false;
      r.members.clear();
    }
    // The server may or may not have sequenced these: they are sent again
    // with the same ids after the rejoin, and the server answers a re-send
    // of one it sequenced with that one's seq (the session's doing).
    for (const e of state.outbox) if (e.state === 'sent') e.state = 'queued';
    if (code === 1008 || code === 1009 || code === 1011) showError('Connection closed: ' + (reason || 'code ' + code));
    // Closed for its token (docs/protocol.md): an expired one is fetched
    // anew by the next attempt; the others would only be refused again.
    if (code >= 4001 && code <= 4005) {
      showError('Signed out: ' + (reason || 'code ' + code));
      if (code !== 4003) state.stopped = true;
    }
    renderRooms();
    renderTop();
    renderMembers();
    if (state.stopped) {
      setConn('disconnected');
      return;
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    // Exponential backoff with jitter so that the clients of a restarting
    // instance do not all come back in the same millisecond.
    const cap = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** state.attempt);
    state.attempt = Math.min(state.attempt + 1, 16);
    setConn(state.everConnected ? 'reconnecting' : 'connecting');
    clearTimeout(state.timers.retry);
    state.timers.retry = setTimeout(connect, cap / 2 + Math.random() * cap / 2);
  }

  function stop() {
    state.stopped = true;
    clearTimeout(state.timers.retry);
    if (state.ws) dropped(state.ws, 1000, '');
    setConn('disconnected');
  }

  // available refills a token bucket a little below the announced rate so
  // that a burst of queued messages does not trip the server's limiter.
  function available() {
    const rate = state.limits.rate_per_second * 0.8;
    if (!(rate > 0)) return Infinity;
    const burst = Math.max(1, state.limits.rate_burst - 4);
    const now = performance.now();
    state.tokens = Math.min(burst, state.tokens + ((now - state.refillAt) / 1000) * rate);
    state.refillAt = now;
    return state.tokens;
  }

  function send(frame) {
    if (!state.ws || !state.ready) return false;
    available();
    state.tokens -= 1;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  function request(kind, room, frame) {
    frame.id = newId(kind[0]);
    if (send(frame)) state.requests.set(frame.id, { kind, room });
  }

  function sendJoin(room) {
    const frame = { type: 'join', room: room.name };
    if (room.lastSeq > 0) {
      frame.since = room.lastSeq;
      if (room.epoch) frame.epoch = room.epoch;
    }
    request('join', room.name, frame);
  }

  function ping() {
    if (!state.ready || state.pingId) return;
    state.pingId = newId('p');
    send({ type: 'ping', id: state.pingId });
    const ws = state.ws;
    state.timers.pong = setTimeout(() => dropped(ws, 4000, 'ping timeout'), PONG_TIMEOUT);
  }

  // ---- frames from the server ----

  const isSeq = (n) => Number.isSafeInteger(n) && n > 0;

  function handle(f) {
    const room = typeof f.room === 'string' ? state.rooms.get(f.room) : undefined;
    const req = typeof f.id === 'string' ? state.requests.get(f.id) : undefined;
    if (req && f.type !== 'chat') state.requests.delete(f.id);
    switch (f.type) {
      case 'welcome': return onWelcome(f);
      case 'joined': return req && room ? onJoined(room, f) : undefined;
      case 'chat': return room && room.joined && isSeq(f.seq) ? onChat(room, f) : undefined;
      case 'ack': return onAck(f);
      case 'history': return room ? onHistory(room, f, req) : undefined;
      case 'presence': return room && room.joined && f.member ? onPresence(room, f) : undefined;
      case 'pong':
        if (f.id === state.pingId) {
          state.pingId = '';
          clearTimeout(state.timers.pong);
        }
        return undefined;
      case 'error': return onError(f, room, req);
      case 'expiring': return f.expires !== state.refreshedFor ? refreshToken(f.expires) : undefined;
      default: return undefined; // 'left' and future frame types
    }
  }

  // refreshToken answers the server's notice that the token expires soon
  // with a fresh one from the hook; without one, the server closes the
  // connection at the expiry and the next attempt fetches a token anew.
  async function refreshToken(expires) {
    const ws = state.ws;
    state.refreshedFor = expires; // once per expiry, whatever the server repeats
    let token = '';
    try {
      token = await getToken();
    } catch (err) {
      return;
    }
    if (token && ws === state.ws && state.ready) ws.send(JSON.stringify({ type: 'refresh', token, id: newId('r') }));
  }

  function onWelcome(f) {
    clearTimeout(state.timers.pong);
    state.ready = true;
    state.draining = false;
    state.everConnected = true;
    state.attempt = 0;
    state.memberId = String(f.id || '');
    // With a token the server names us: its nick is the one shown.
    state.user = typeof f.user === 'string' ? f.user : '';
    if (typeof f.nick === 'string' && f.nick && f.user) {
      state.nick = f.nick;
      ui.meNick.textContent = f.nick;
    }
    state.myIds.add(state.memberId);
    Object.assign(state.limits, f.limits || {});
    state.tokens = Math.max(1, state.limits.rate_burst - 4);
    state.refillAt = performance.now();
    state.pingId = '';
    state.timers.ping = setInterval(ping, PING_EVERY);
    setInstance(String(f.instance || ''));
    setConn('connected');
    for (const r of state.rooms.values()) sendJoin(r);
  }

  function onJoined(room, f) {
    room.joined = true;
    room.members = new Map((f.members || []).map((m) => [m.id, m]));
    const history = (f.history || []).filter((m) => isSeq(m.seq));
    const restarted = typeof f.epoch === 'string' && room.epoch && f.epoch !== room.epoch;
    if (typeof f.epoch === 'string') room.epoch = f.epoch;
    if (restarted || (Number.isSafeInteger(f.seq) && f.seq < room.lastSeq)) {
      // The room's numbering started over (a new epoch: a relayer back with
      // a new or salvaged log; a standalone instance restarted): what we
      // show would collide with the new numbers, and the answer recovers
      // the new numbering from its start.
      room.msgs = [];
      room.lastSeq = 0;
      room.notice = 'The server started this room\'s numbering over; earlier messages may be gone.';
    } else if (f.recovered === false) {
      // What we showed and what the server still has no longer meet.
      room.msgs = [];
      room.atStart = false;
      room.notice = 'Some messages could not be recovered after the connection was lost.';
    }
    for (const m of history) addMsg(room, m);
    if (isSeq(f.seq) && f.seq > room.lastSeq) room.lastSeq = f.seq;
    if (room.msgs.length === 0 ? room.lastSeq === 0 : room.msgs[0].seq <= 1) room.atStart = true;
    // Anything of ours that reached the room before the connection died and
    // is in the history now needs no re-send (the server would only ack it).
    const seen = new Set(room.msgs.filter((m) => m.id && state.myIds.has(m.uid)).map((m) => m.id));
    state.outbox = state.outbox.filter((e) => e.room !== room.name || !(e.state === 'acked' || seen.has(e.cid)));
    if (room.name === state.active) renderRoom(nearBottom());
    renderRooms();
    flushOutbox();
  }

  function onChat(room, f) {
    if (room.lastSeq > 0 && f.seq > room.lastSeq + 1) {
      const missing = f.seq - room.lastSeq - 1;
      request('history', room.name, { type: 'history', room: room.name, before: f.seq, limit: Math.min(missing, state.limits.history) });
    }
    const mine = isMine(f);
    const queued = state.outbox.length;
    if (mine && f.id) state.outbox = state.outbox.filter((e) => e.cid !== f.id);
    const active = room.name === state.active;
    const stick = active && (mine || nearBottom());
    const m = addMsg(room, f);
    if (m && m.seq > room.lastSeq) room.lastSeq = m.seq;
    let redraw = false;
    if (room.msgs.length > KEEP_PER_ROOM) {
      room.msgs.splice(0, room.msgs.length - KEEP_PER_ROOM);
      room.atStart = false;
      redraw = true;
    }
    if (!active) {
      if (m && !mine) {
        room.unread++;
        renderRooms();
      }
    } else if (redraw) {
      renderRoom(stick);
    } else {
      if (m) insertMsgNode(m);
      if (state.outbox.length !== queued) renderOutbox();
      if (stick) scrollToBottom();
    }
  }

  function onAck(f) {
    const e = state.outbox.find((x) => x.cid === f.id);
    if (!e) return; // its chat frame came first
    e.state = 'acked';
    e.seq = f.seq;
    if (e.room === state.active) renderOutbox();
  }

  function onHistory(room, f, req) {
    if (req && req.kind === 'history') room.loading = false;
    const msgs = (f.messages || []).filter((m) => isSeq(m.seq));
    for (const m of msgs) addMsg(room, m);
    const first = Math.max(1, Number(f.first) || 1);
    if (room.msgs.length === 0 || room.msgs[0].seq <= first) room.atStart = true;
    if (room.name === state.active) renderRoom(false);
  }

  function onPresence(room, f) {
    if (f.event === 'join') room.members.set(f.member.id, f.member);
    else if (f.event === 'leave') room.members.delete(f.member.id);
    if (room.name === state.active) renderMembers();
  }

  function onError(f, room, req) {
    const text = String(f.message || f.code || 'error');
    const out = typeof f.id === 'string' ? state.outbox.find((e) => e.cid === f.id) : undefined;
    if (out) {
      if (f.code === 'rate_limited' || f.code === 'shutting_down') {
        // Worth repeating by ourselves: later, or on the next instance.
        out.state = 'queued';
        if (f.code === 'shutting_down') state.draining = true;
        state.tokens = 0;
        scheduleFlush(1000);
      } else {
        out.state = 'failed';
        out.error = text;
      }
      if (out.room === state.active) renderOutbox();
      return;
    }
    if (req && req.kind === 'join' && room) {
      if (f.code === 'rate_limited' || f.code === 'unavailable') {
        setTimeout(() => { if (state.ready && state.rooms.get(room.name) === room && !room.joined) sendJoin(room); }, 1000);
        return;
      }
      if (f.code !== 'already_joined') {
        removeRoom(room.name);
        ui.joinError.textContent = text;
      }
      return;
    }
    if (req && req.kind === 'history' && room) {
      room.loading = false;
      if (room.name === state.active) renderTop();
      return;
    }
    if (f.code === 'bad_nick') {
      stop();
      showLogin(text);
      return;
    }
    if (room && f.code === 'history_gap') {
      room.notice = text;
      if (room.name === state.active) renderNotice();
      return;
    }
    showError(text);
  }

  // ---- model ----

  const isMine = (m) => state.myIds.has(m.uid);

  // addMsg inserts a copy of m in seq order and returns it, or null when
  // its seq is known already.
  function addMsg(room, m) {
    const a = room.msgs;
    let lo = 0;
    let hi = a.length;
    if (hi === 0 || a[hi - 1].seq < m.seq) lo = hi; // the usual case: newest
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (a[mid].seq < m.seq) lo = mid + 1;
      else hi = mid;
    }
    if (lo < a.length && a[lo].seq === m.seq) return null;
    const copy = {
      seq: m.seq, id: typeof m.id === 'string' ? m.id : '', from: String(m.from || ''), uid: String(m.uid || ''),
      user: typeof m.user === 'string' ? m.user : '',
      message: String(m.message ?? ''), ts: Number(m.ts) || 0,
    };
    a.splice(lo, 0, copy);
    return copy;
  }

  function joinRoom(name) {
    ui.joinError.textContent = '';
    if (!state.rooms.has(name)) {
      const room = newRoom(name);
      state.rooms.set(name, room);
      if (state.ready) sendJoin(room);
    }
    switchRoom(name);
  }

  function removeRoom(name) {
    state.rooms.delete(name);
    state.outbox = state.outbox.filter((e) => e.room !== name);
    if (state.active === name) state.active = state.rooms.size ? state.rooms.keys().next().value : '';
    renderAll();
  }

  function leaveRoom(name) {
    const room = state.rooms.get(name);
    if (room && room.joined) request('leave', name, { type: 'leave', room: name });
    removeRoom(name);
    ui.room.focus();
  }

  function switchRoom(name) {
    state.active = name;
    const room = current();
    if (room) room.unread = 0;
    renderAll();
  }

  function queueMessage(text) {
    const room = current();
    if (!room) return;
    const size = new TextEncoder().encode(text).length;
    if (size > state.limits.max_message_bytes) {
      showError(`Message is ${size} bytes; the limit is ${state.limits.max_message_bytes}.`);
      return;
    }
    state.outbox.push({ cid: newId('c'), room: room.name, text, state: 'queued', error: '', seq: 0 });
    ui.input.value = '';
    showError('');
    renderOutbox();
    scrollToBottom();
    flushOutbox();
  }

  // flushOutbox sends queued messages of joined rooms in the order typed,
  // no faster than the token bucket allows.
  function flushOutbox() {
    clearTimeout(state.timers.flush);
    if (!state.ready || state.draining) return;
    let changed = false;
    for (const e of state.outbox) {
      const room = state.rooms.get(e.room);
      if (e.state !== 'queued' || !room || !room.joined) continue;
      const have = available();
      if (have < 1) {
        scheduleFlush(((1 - have) / (state.limits.rate_per_second * 0.8)) * 1000);
        break;
      }
      send({ type: 'chat', room: e.room, message: e.text, id: e.cid });
      e.state = 'sent';
      changed = true;
    }
    if (changed) renderOutbox();
  }

  function scheduleFlush(ms) {
    clearTimeout(state.timers.flush);
    state.timers.flush = setTimeout(flushOutbox, Math.max(10, ms));
  }

  function loadOlder(room) {
    if (!room || !room.joined || room.loading || room.atStart) return;
    const before = room.msgs.length ? room.msgs[0].seq : room.lastSeq + 1;
    if (before <= 1) {
      room.atStart = true;
      renderTop();
      return;
    }
    room.loading = true;
    request('history', room.name, { type: 'history', room: room.name, before, limit: state.limits.history });
    renderTop();
  }

  // ---- rendering ----

  function renderAll() {
    renderRooms();
    renderRoom(true);
  }

  function renderRooms() {
    let unread = 0;
    ui.roomList.replaceChildren(...Array.from(state.rooms.values(), (r) => {
      unread += r.unread;
      const b = button('', () => { switchRoom(r.name); ui.input.focus(); }, 'room-btn');
      b.dataset.room = r.name;
      b.append(h('span', 'room-name', r.name));
      if (!r.joined) b.append(h('span', 'joining', state.ready ? 'joining…' : 'offline'));
      if (r.unread) b.append(h('span', 'badge', String(r.unread)), h('span', 'visually-hidden', ' unread'));
      if (r.name === state.active) b.setAttribute('aria-current', 'true');
      const li = h('li');
      li.append(b);
      return li;
    }));
    document.title = (unread ? `(${unread}) ` : '') + 'wschat';
  }

  // renderRoom redraws the active room; bottom scrolls to the newest
  // message, otherwise the view stays where it was relative to the newest
  // message (so prepended history does not move what the reader sees).
  function renderRoom(bottom) {
    const room = current();
    ui.roomTitle.textContent = room ? room.name : 'No room joined';
    ui.leave.hidden = !room;
    ui.input.disabled = ui.send.disabled = !room;
    const fromBottom = ui.list.scrollHeight - ui.list.scrollTop;
    ui.list.replaceChildren();
    if (room) {
      ui.list.append(h('li', 'history-top'));
      for (const m of room.msgs) ui.list.append(msgNode(m));
    }
    renderTop();
    renderOutbox();
    renderNotice();
    renderMembers();
    if (bottom) scrollToBottom();
    else ui.list.scrollTop = ui.list.scrollHeight - fromBottom;
  }

  function renderTop() {
    const top = ui.list.firstElementChild;
    const room = current();
    if (!room || !top || !top.classList.contains('history-top')) return;
    if (room.atStart) top.replaceChildren(h('span', '', room.msgs.length ? 'Beginning of the room' : 'No messages yet'));
    else if (room.loading) top.replaceChildren(h('span', '', 'Loading older messages…'));
    else top.replaceChildren(button('Load older messages', () => loadOlder(room)));
  }

  function renderNotice() {
    const room = current();
    ui.notice.replaceChildren();
    ui.notice.hidden = !room || !room.notice;
    if (ui.notice.hidden) return;
    ui.notice.append(h('span', '', room.notice), ' ', button('Dismiss', () => {
      room.notice = '';
      renderNotice();
    }));
  }

  // who shows a verified user apart from a chosen nickname: "Ann @ann"
  // for a token's user, "ops (server)" for the server API, the bare nick
  // for an anonymous one (which anyone may pick).
  function who(nick, user, cls) {
    const span = h('span', cls, nick || 'anonymous');
    if (user === '$system') span.append(h('span', 'verified', ' (server)'));
    else if (user) span.append(h('span', 'verified', ' @' + user));
    return span;
  }

  function meta(nick, mine, ts, user) {
    const div = h('div', 'meta');
    div.append(who(nick, user, 'author'));
    if (mine) div.append(h('span', 'you', ' (you)'));
    if (ts) {
      const d = new Date(ts);
      const t = h('time', '', d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }));
      t.dateTime = d.toISOString();
      t.title = d.toLocaleString();
      div.append(' ', t);
    }
    return div;
  }

  function msgNode(m) {
    const mine = isMine(m);
    const li = h('li', mine ? 'msg mine' : 'msg');
    li.dataset.seq = String(m.seq);
    if (m.id) li.dataset.id = m.id;
    li.append(meta(m.from, mine, m.ts, m.user), h('p', 'text', m.message));
    return li;
  }

  function insertMsgNode(m) {
    const node = msgNode(m);
    let ref = null;
    for (let c = ui.list.lastElementChild; c; c = c.previousElementSibling) {
      if (c.classList.contains('msg')) {
        if (Number(c.dataset.seq) < m.seq) break;
      } else if (!c.classList.contains('outgoing')) break;
      ref = c;
    }
    ui.list.insertBefore(node, ref);
  }

  // renderOutbox redraws our unsequenced messages below the sequenced ones.
  // They carry class "outgoing", not "msg": they have no seq yet.
  function renderOutbox() {
    for (const n of ui.list.querySelectorAll('.outgoing')) n.remove();
    if (!current()) return;
    for (const e of state.outbox) {
      if (e.room !== state.active) continue;
      const li = h('li', 'outgoing mine ' + e.state);
      li.dataset.cid = e.cid;
      const status = h('p', 'delivery');
      if (e.state === 'failed') {
        status.append(h('strong', '', 'not sent'), ': ' + e.error + ' ',
          button('Retry', () => { e.state = 'queued'; e.error = ''; renderOutbox(); flushOutbox(); }),
          ' ', button('Discard', () => { state.outbox = state.outbox.filter((x) => x !== e); renderOutbox(); ui.input.focus(); }));
      } else {
        status.textContent = e.state === 'acked' ? 'sent' : 'sending…';
      }
      li.append(meta(state.nick, true, 0, state.user), h('p', 'text', e.text), status);
      ui.list.append(li);
    }
  }

  function renderMembers() {
    const room = current();
    const ms = room ? Array.from(room.members.values()) : [];
    ms.sort((a, b) => String(a.nick).localeCompare(String(b.nick)) || String(a.id).localeCompare(String(b.id)));
    ui.members.replaceChildren(...ms.map((m) => {
      const li = h('li', m.id === state.memberId ? 'member self' : 'member');
      li.append(who(String(m.nick || '(anonymous)'), typeof m.user === 'string' ? m.user : '', 'nick'));
      if (m.id === state.memberId) li.append(h('span', 'you', ' (you)'));
      if (m.instance) li.append(' ', h('span', 'where', String(m.instance)));
      return li;
    }));
    ui.memberCount.textContent = room && room.joined ? `(${ms.length})` : '';
  }

  function nearBottom() {
    return ui.list.scrollHeight - ui.list.scrollTop - ui.list.clientHeight < 80;
  }

  function scrollToBottom() {
    ui.list.scrollTop = ui.list.scrollHeight;
  }

  function showError(text) {
    ui.sendError.textContent = text;
  }

  // ---- login and wiring ----

  function nameError(s, what) {
    if (!s) return what + ' must not be empty.';
    if (/[\p{Cc}\p{Cf}]/u.test(s)) return what + ' must not contain control characters.';
    return '';
  }

  function showLogin(error) {
    ui.chat.hidden = true;
    ui.me.hidden = true;
    ui.login.hidden = false;
    ui.nick.value = state.nick || ui.nick.value;
    ui.loginError.textContent = error || '';
    ui.nick.focus();
  }

  function login(nick, remember) {
    nick = nick.trim();
    const err = nameError(nick, 'Nickname');
    if (err) {
      showLogin(err);
      return;
    }
    state.nick = nick;
    if (remember) {
      try {
        localStorage.setItem(NICK_KEY, nick);
      } catch (e) { /* storage disabled: just not remembered */ }
    }
    ui.meNick.textContent = nick;
    ui.login.hidden = true;
    ui.chat.hidden = false;
    ui.me.hidden = false;
    // The connection badge only once a connection is wanted: before
    // login, "disconnected" would read like an error.
    ui.status.hidden = false;
    state.stopped = false;
    state.attempt = 0;
    connect();
    renderAll();
    (state.rooms.size ? ui.input : ui.room).focus();
  }

  ui.loginForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    login(ui.nick.value, true);
  });
  ui.logout.addEventListener('click', () => {
    stop();
    ui.status.hidden = true;
    showLogin('');
  });
  ui.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = ui.room.value.trim();
    const err = nameError(name, 'Room name');
    ui.joinError.textContent = err;
    if (err) return;
    ui.room.value = '';
    joinRoom(name);
    ui.input.focus();
  });
  ui.leave.addEventListener('click', () => { if (state.active) leaveRoom(state.active); });
  ui.sendForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (ui.input.value.trim()) queueMessage(ui.input.value);
  });
  ui.list.addEventListener('scroll', () => { if (ui.list.scrollTop < 40) loadOlder(current()); });
  // Coming back online is the moment to retry, not whenever backoff says.
  window.addEventListener('online', () => {
    if (!state.stopped && !state.ws) {
      state.attempt = 0;
      connect();
    }
  });

  // ?nick=NAME&room=ROOM logs in and joins at once (used by browser tests).
  const params = new URLSearchParams(location.search);
  let saved = '';
  try {
    saved = localStorage.getItem(NICK_KEY) || '';
  } catch (e) { /* storage disabled */ }
  ui.nick.value = saved;
  // Phones show the member list folded so the messages get the screen.
  if (window.matchMedia('(max-width: 760px)').matches) $('members-box').open = false;
  if (params.get('nick')) {
    login(params.get('nick'), false);
    const room = (params.get('room') || '').trim();
    if (room && !nameError(room, 'Room')) joinRoom(room);
  } else {
    showLogin('');
  }
})();
