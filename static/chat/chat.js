/* The live project page (docs/PROTOCOL.md): socket, catch-up, optimistic sends, typing,
 * presence, reads, older history, edit and delete, reactions and attachments.
 *
 * Plain modern JavaScript, no build step, no dependencies. The server renders
 * the page first (it reads without this file); this script takes over the
 * rendered messages and keeps them current. User text only ever reaches the
 * DOM through textContent and attributes, with one exception: a message's
 * `content_html`, which the server rendered and sanitized (docs/API.md,
 * "Formatting"), goes in through setMessageHtml, the one use of innerHTML.
 *
 * Ordering rules it relies on: every change in a project has the next number
 * (`changed_seq`); history is ordered by `seq`. `lastChangedSeq` only moves
 * through contiguous streams (socket batches and the `after=` catch-up API),
 * so a reconnect with `after=lastChangedSeq` can never skip a change. Messages
 * from other paths (ack, POST, PATCH responses, older pages) are applied by id
 * but never move it.
 */
(function () {
  "use strict";

  const stateElement = document.getElementById("chat-state");
  if (!stateElement) return;
  const state = JSON.parse(stateElement.textContent);

  const PING_MS = 25000;
  const PONG_TIMEOUT_MS = 10000;
  const TYPING_SEND_MS = 2000;
  const TYPING_SHOW_MS = 3000;
  const READ_DEBOUNCE_MS = 1000;
  const ACK_TIMEOUT_MS = 10000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const CATCH_UP_LIMIT = 200;
  const PAGE_LIMIT = 50;
  // The pattern of chat/mentions.py: `@` not after a name character, then a
  // username with dots only inside ("thanks @bob." mentions bob). Only the
  // composer's @all question uses it: mentions in messages arrive as spans in
  // content_html.
  const MENTION_PATTERN = /(?<![\p{L}\p{N}_.@+\-])@([\p{L}\p{N}_+\-]+(?:\.[\p{L}\p{N}_+\-]+)*)/gu;
  const MENTION_ALL = "all";
  // An @all reaching more members than this asks first.
  const MENTION_ALL_CONFIRM_OVER = 10;
  // The picker's common emoji; any emoji or :shortcode: is accepted by the API.
  const REACTION_CHOICES = ["👍", "❤️", "😂", "🎉", "😮", "😢", "👀", "✅"];
  // The longest side of a thumbnail, as the server makes them.
  const THUMBNAIL_SIDE = 400;
  const MAX_ATTACHMENTS = 10;
  const FINAL_CLOSE = {
    4401: "You were signed out.",
    // Removal by an owner or admin, or leaving in another tab (docs/PROTOCOL.md).
    4403: "You were removed from this project.",
    4404: "This project no longer exists.",
    4429: "Too many open chat tabs: close some and reload this one.",
  };

  const $ = (id) => document.getElementById(id);
  const list = $("messages");
  const scroller = $("scroller");
  const composer = $("composer");
  const input = $("composer-input");
  const offlineBanner = $("offline-banner");
  const notice = $("notice");
  const typingArea = $("typing");
  const onlineList = $("online-list");
  const attachInput = $("attach-input");
  const attachButton = $("attach-button");
  const pendingList = $("pending-attachments");
  const projectId = state.projectId;
  const me = state.user;
  const uploadMaxBytes = state.uploadMaxBytes;

  const byId = new Map(); // message id -> {data, el}
  const pending = new Map(); // client_msg_id -> {content, el, via, timer}
  const editing = new Set(); // ids of messages with an open editor
  const typers = new Map(); // username -> timer
  const uploads = []; // files for the next send: {file, el, xhr, upload, error}
  const usernames = new Map([[me.id, "you"]]); // user id -> name, for reaction titles

  let lastChangedSeq = state.lastChangedSeq || 0;
  let oldestSeq = state.oldestSeq;
  let newestSeq = state.newestSeq || 0;
  let hasOlder = !!state.hasOlder;
  let lastReadSent = state.lastReadSeq || 0;
  let helloSeq = null;
  let socket = null;
  let socketGeneration = 0;
  let connected = false;
  let stopped = false;
  let backoff = BACKOFF_MIN_MS;
  let reconnectTimer = null;
  let pingTimer = null;
  let pongTimer = null;
  let lastTypingSent = 0;
  let readTimer = null;
  let loadingOlder = false;
  let noticeTimer = null;
  // Frames that change history are handled one at a time, in arrival order,
  // even when one of them has to wait for a catch-up request.
  let frameChain = Promise.resolve();

  // ---------------------------------------------------------------- HTTP

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) return Promise.resolve(decodeURIComponent(match[1]));
    const field = document.querySelector("input[name=csrfmiddlewaretoken]");
    if (field && field.value) return Promise.resolve(field.value);
    return fetch("/api/auth/csrf", { credentials: "same-origin" })
      .then((response) => response.json())
      .then((body) => body.csrf_token);
  }

  class ApiError extends Error {
    constructor(status, body) {
      const error = (body && body.error) || {};
      super(error.message || `Request failed (${status}).`);
      this.status = status;
      this.code = error.code || "error";
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      headers["X-CSRFToken"] = await csrfToken();
    }
    const response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      if (response.status === 401) signedOut();
      throw new ApiError(response.status, data);
    }
    return data;
  }

  const messagesUrl = (query) => `/api/projects/${projectId}/messages?${query}`;

  // ---------------------------------------------------------------- notices

  function showNotice(text, { link, timeout = 5000 } = {}) {
    notice.textContent = text;
    if (link) {
      notice.append(" ");
      const a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.text;
      notice.append(a);
    }
    notice.hidden = false;
    clearTimeout(noticeTimer);
    if (timeout) noticeTimer = setTimeout(() => (notice.hidden = true), timeout);
  }

  /** 4401 closes the sockets of an ended session; this browser may hold a new
   *  one (a password changed in another tab rotates the session): reconnect
   *  then, else say so. */
  function checkStillSignedIn() {
    fetch("/api/auth/me", { credentials: "same-origin" })
      .then((response) => {
        if (response.ok) {
          stopped = false;
          scheduleReconnect();
        } else {
          signedOut();
        }
      })
      .catch(signedOut);
  }

  function signedOut() {
    stopped = true;
    showNotice("You were signed out.", {
      link: { href: `${state.loginUrl}?next=${encodeURIComponent(location.pathname)}`, text: "Sign in again" },
      timeout: 0,
    });
  }

  // ---------------------------------------------------------------- rendering

  const timeFormat = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });

  function formatTime(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? "" : timeFormat.format(date);
  }

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function mentionsEveryone(text) {
    for (const match of text.matchAll(MENTION_PATTERN)) {
      if (match[1] === MENTION_ALL) return true;
    }
    return false;
  }

  /** Whether sending text may go ahead: an @all to many members asks first. */
  function confirmMentionAll(text) {
    if (!(state.memberCount > MENTION_ALL_CONFIRM_OVER) || !mentionsEveryone(text)) return true;
    return window.confirm(
      `@all notifies all ${state.memberCount - 1} other members of ${state.projectName}. Send it?`,
    );
  }

  /** The one place this script inserts HTML: a message's content_html, rendered
   *  and sanitized by the server (no script, no raw HTML of the author's). */
  function setMessageHtml(el, html) {
    el.innerHTML = html;
  }

  /** Mark the spans that mention me (`@me`, `@all`) in others' messages. */
  function markMentionsOfMe(body, m) {
    // Your own messages mention nobody to you (@all skips its author too).
    if (m.user.id === me.id) return false;
    let found = false;
    for (const span of body.querySelectorAll("span.mention[data-user-id]")) {
      const id = span.dataset.userId;
      if (id === String(me.id) || id === MENTION_ALL) {
        span.classList.add("mention-me");
        found = true;
      }
    }
    return found;
  }

  /** Build a message body from its content_html; null for a message of files only. */
  function renderBody(m) {
    const body = element("div", "msg-body");
    if (typeof m.content_html === "string") {
      if (!m.content_html) return { body: null, found: false };
      setMessageHtml(body, m.content_html);
    } else {
      body.textContent = m.content; // a message JSON from before formatting
    }
    return { body, found: markMentionsOfMe(body, m) };
  }

  /** The size as Django's filesizeformat writes it (the server-rendered page). */
  function formatSize(bytes) {
    if (bytes < 1024) return `${bytes} byte${bytes === 1 ? "" : "s"}`;
    const units = ["KB", "MB", "GB", "TB"];
    let value = bytes / 1024;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value.toFixed(1)} ${units[unit]}`;
  }

  /** A URL of ours (a path on this origin), or null: never another scheme. */
  function localUrl(url) {
    return typeof url === "string" && url.startsWith("/") && !url.startsWith("//") ? url : null;
  }

  /** Images as thumbnails opening the full image; other files as download links. */
  function renderAttachments(m) {
    const items = m.attachments || [];
    if (m.deleted || !items.length) return null;
    const ul = element("ul", "attachments");
    for (const a of items) {
      const url = localUrl(a.url);
      const thumbnail = localUrl(a.thumbnail_url);
      const isImage = !!(thumbnail && a.width && a.height);
      const li = element("li", `attachment ${isImage ? "attachment-image" : "attachment-file"}`);
      const link = element("a");
      if (url) link.href = url;
      if (isImage) {
        link.target = "_blank";
        link.rel = "noopener";
        const scale = Math.min(1, THUMBNAIL_SIDE / Math.max(a.width, a.height));
        const img = element("img");
        img.loading = "lazy";
        img.width = Math.max(1, Math.round(a.width * scale));
        img.height = Math.max(1, Math.round(a.height * scale));
        img.alt = a.name;
        img.src = thumbnail;
        link.append(img);
        li.append(link);
      } else {
        link.download = a.name;
        link.textContent = a.name;
        li.append(link, " ", element("span", "attachment-size", formatSize(a.size)));
      }
      ul.append(li);
    }
    return ul;
  }

  function reactionTitle(reaction) {
    const who = reaction.user_ids.filter((id) => usernames.has(id)).map((id) => usernames.get(id));
    if (!who.length) return `${reaction.count} reaction${reaction.count === 1 ? "" : "s"}`;
    const more = reaction.count - who.length;
    return more > 0 ? `${who.join(", ")} and ${more} more` : who.join(", ");
  }

  function isMine(reaction) {
    return reaction.user_ids.includes(me.id);
  }

  /** The reactions under a message (a click toggles mine) and the emoji picker. */
  function renderReactions(m) {
    const box = element("div", "msg-reactions");
    for (const reaction of m.reactions || []) {
      const button = element("button", "reaction");
      button.type = "button";
      button.dataset.emoji = reaction.emoji;
      button.title = reactionTitle(reaction);
      button.setAttribute("aria-pressed", isMine(reaction) ? "true" : "false");
      if (isMine(reaction)) button.classList.add("reaction-mine");
      button.append(
        element("span", "reaction-emoji", reaction.emoji),
        " ",
        element("span", "reaction-count", String(reaction.count)),
      );
      button.addEventListener("click", () => toggleReaction(m.id, reaction.emoji));
      box.append(button);
    }
    const add = element("button", "reaction-add", "☺+");
    add.type = "button";
    add.setAttribute("aria-label", "Add reaction");
    add.setAttribute("aria-expanded", "false");
    const picker = element("div", "reaction-picker");
    picker.hidden = true;
    picker.setAttribute("role", "group");
    picker.setAttribute("aria-label", "Pick a reaction");
    for (const emoji of REACTION_CHOICES) {
      const choice = element("button", "reaction-choice", emoji);
      choice.type = "button";
      choice.dataset.emoji = emoji;
      choice.setAttribute("aria-label", `React with ${emoji}`);
      choice.addEventListener("click", () => {
        picker.hidden = true;
        add.setAttribute("aria-expanded", "false");
        toggleReaction(m.id, emoji);
      });
      picker.append(choice);
    }
    add.addEventListener("click", () => {
      picker.hidden = !picker.hidden;
      add.setAttribute("aria-expanded", picker.hidden ? "false" : "true");
    });
    box.append(add, picker);
    return box;
  }

  /** Replace a message element's reactions (an open editor stays as it is). */
  function refreshReactions(known) {
    const old = known.el.querySelector(".msg-reactions, .reactions");
    if (known.data.deleted) {
      if (old) old.remove();
      return;
    }
    const box = renderReactions(known.data);
    if (old) old.replaceWith(box);
    else known.el.append(box);
  }

  function canEdit(m) {
    if (m.deleted || m.user.id !== me.id) return false;
    const age = (Date.now() - new Date(m.created_at).getTime()) / 1000;
    return !(age > state.editWindowSeconds);
  }

  function canDelete(m) {
    return !m.deleted && (m.user.id === me.id || state.canModerate);
  }

  /** Build a confirmed message's element: the same markup as chat/_message.html. */
  function renderMessage(m) {
    const li = element("li", "msg");
    if (m.deleted) li.classList.add("msg-deleted");
    if (m.user.id === me.id) li.classList.add("msg-own");
    li.id = `m-${m.seq}`;
    li.dataset.id = m.id;
    li.dataset.seq = m.seq;
    li.dataset.changedSeq = m.changed_seq;
    li.dataset.clientMsgId = m.client_msg_id || "";
    li.dataset.authorId = m.user.id;
    li.dataset.createdAt = m.created_at;

    const meta = element("div", "msg-meta");
    meta.append(element("span", "msg-author", m.user.username));
    if (state.messageButtons && m.user.id !== me.id) {
      // As chat/_message.html: submits the page's one #dm-open form (CSRF) to /dm/<username>.
      const dm = element("button", "link-button msg-dm", "Message");
      dm.type = "submit";
      dm.setAttribute("form", "dm-open");
      dm.setAttribute("formaction", state.dmUrl + encodeURIComponent(m.user.username));
      dm.title = `Message ${m.user.username} directly`;
      meta.append(dm);
    }
    const link = element("a", "msg-time");
    link.href = `${state.projectUrl}?around=${m.seq}#m-${m.seq}`;
    const time = element("time", null, formatTime(m.created_at));
    time.dateTime = m.created_at;
    link.append(time);
    meta.append(link);
    if (m.edited_at && !m.deleted) meta.append(element("span", "msg-edited", "(edited)"));
    li.append(meta);

    if (m.deleted) {
      li.append(element("div", "msg-body msg-tombstone", "message deleted"));
    } else {
      const { body, found } = renderBody(m);
      if (found) li.classList.add("msg-mentions-me");
      if (body) li.append(body);
      const attachments = renderAttachments(m);
      if (attachments) li.append(attachments);
      li.append(renderReactions(m));
    }
    addControls(li, m);
    return li;
  }

  function addControls(li, m) {
    const actions = element("div", "msg-actions");
    if (canEdit(m)) {
      const edit = element("button", null, "Edit");
      edit.type = "button";
      edit.setAttribute("aria-label", "Edit message");
      edit.addEventListener("click", () => openEditor(m.id));
      actions.append(edit);
    }
    if (canDelete(m)) {
      const remove = element("button", null, "Delete");
      remove.type = "button";
      remove.setAttribute("aria-label", "Delete message");
      remove.addEventListener("click", () => deleteMessage(m.id));
      actions.append(remove);
    }
    if (actions.childElementCount) li.append(actions);
  }

  /** Remember who wrote a message, to name reactors in reaction titles. */
  function learnName(user) {
    if (user && user.id !== me.id && !usernames.has(user.id)) usernames.set(user.id, user.username);
  }

  function removeEmptyPlaceholder() {
    const empty = $("empty-history");
    if (empty) empty.remove();
  }

  /** Insert a confirmed message's element by seq, above any pending ones. */
  function insertInOrder(el, seq) {
    removeEmptyPlaceholder();
    for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
      if (!node.classList.contains("msg") || node.classList.contains("msg-pending")) continue;
      if (Number(node.dataset.seq) < seq) {
        node.after(el);
        return;
      }
    }
    const firstMessage = list.querySelector(".msg");
    if (firstMessage) firstMessage.before(el);
    else list.prepend(el);
  }

  // ---------------------------------------------------------------- applying changes

  /** Apply one message JSON by id; idempotent, and a stale version never wins. */
  function applyMessage(m) {
    if (m.client_msg_id && pending.has(m.client_msg_id)) {
      const entry = pending.get(m.client_msg_id);
      clearTimeout(entry.timer);
      entry.el.remove();
      pending.delete(m.client_msg_id);
    }
    const known = byId.get(m.id);
    if (known) {
      if (m.changed_seq <= known.data.changed_seq) return;
      known.data = m;
      // Keep an open editor (reactions still update); the newest version
      // shows when it closes.
      if (editing.has(m.id) && !m.deleted) {
        refreshReactions(known);
        return;
      }
      editing.delete(m.id);
      const el = renderMessage(m);
      known.el.replaceWith(el);
      known.el = el;
      return;
    }
    // A change to a message above the loaded range shows when that page loads.
    if (hasOlder && oldestSeq != null && m.seq < oldestSeq) return;
    // On an older page (?before=, ?around=) new messages are not appended
    // under it; the reader is told and can jump to the latest.
    if (!state.isLatest && m.seq > newestSeq) {
      showNotice("New messages.", { link: { href: `${state.projectUrl}#composer`, text: "Jump to latest" }, timeout: 0 });
      return;
    }
    learnName(m.user);
    const el = renderMessage(m);
    byId.set(m.id, { data: m, el });
    insertInOrder(el, m.seq);
    if (oldestSeq == null || m.seq < oldestSeq) oldestSeq = m.seq;
    if (m.seq > newestSeq) newestSeq = m.seq;
    if (m.user.id !== me.id) clearTyping(m.user.username);
  }

  /** Apply a change from a contiguous stream and advance the cursor. */
  function applyStreamMessage(m) {
    applyMessage(m);
    if (m.changed_seq > lastChangedSeq) lastChangedSeq = m.changed_seq;
  }

  async function catchUp() {
    for (;;) {
      const page = await api("GET", messagesUrl(`after=${lastChangedSeq}&limit=${CATCH_UP_LIMIT}`));
      page.items.forEach(applyStreamMessage);
      if (!page.has_more || page.items.length === 0) return;
    }
  }

  async function handleBatch(messages) {
    if (!messages.length) return;
    if (messages[0].changed_seq > lastChangedSeq + 1) {
      // A gap: the changes in between come from the API before this batch.
      await catchUp();
    }
    messages.forEach(applyStreamMessage);
    afterNewMessages();
  }

  /** Reload the latest page after the server said it will not replay. */
  async function resync() {
    const page = await api("GET", messagesUrl(`limit=${PAGE_LIMIT}`));
    byId.clear();
    editing.clear();
    for (const node of [...list.children]) {
      if (!node.classList.contains("msg-pending")) node.remove();
    }
    oldestSeq = null;
    newestSeq = 0;
    hasOlder = page.has_more;
    state.isLatest = true;
    page.items.slice().reverse().forEach(applyMessage);
    updateOlderLink();
    // The hub's number at hello: later changes follow live, earlier ones are
    // in the page just read (a change in both is applied once, by id).
    if (helloSeq != null) lastChangedSeq = Math.max(lastChangedSeq, helloSeq);
    scrollToBottom();
    afterNewMessages();
  }

  // ---------------------------------------------------------------- socket

  function socketUrl() {
    // state.wsBase: a separate socket server (WS_PUBLIC_URL); else this origin.
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const base = state.wsBase || `${scheme}://${location.host}`;
    return `${base}/ws/projects/${projectId}/?after=${lastChangedSeq}`;
  }

  function connect() {
    if (stopped) return;
    clearTimeout(reconnectTimer);
    const generation = ++socketGeneration;
    if (socket) socket.close(4000, "replaced"); // its events are ignored from here on
    const ws = new WebSocket(socketUrl());
    socket = ws;
    ws.addEventListener("message", (event) => {
      if (generation !== socketGeneration) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      onFrame(frame, ws, generation);
    });
    ws.addEventListener("close", (event) => {
      if (generation !== socketGeneration) return;
      onClose(event);
    });
  }

  function onFrame(frame, ws, generation) {
    clearTimeout(pongTimer);
    switch (frame.type) {
      case "hello":
      case "message_batch":
      case "resync_required":
      case "ack":
        frameChain = frameChain
          .then(() => {
            // Frames still queued from a replaced socket are dropped: the new
            // socket replays from the cursor, and sends fall back to HTTP.
            if (generation === socketGeneration) return onHistoryFrame(frame);
          })
          .catch(() => {
            // A catch-up failed: reconnect, and the server replays from our cursor.
            if (ws.readyState <= WebSocket.OPEN) ws.close(4000, "catch-up failed");
          });
        break;
      case "typing":
        if (frame.user && frame.user.id !== me.id) showTyping(frame.user.username);
        break;
      case "presence":
        renderOnline(frame.online || []);
        break;
      case "error":
        onErrorFrame(frame);
        break;
      case "pong":
      default:
        break;
    }
  }

  async function onHistoryFrame(frame) {
    if (frame.type === "hello") {
      helloSeq = frame.seq;
      connected = true;
      backoff = BACKOFF_MIN_MS;
      offlineBanner.hidden = true;
      startPing();
      scheduleRead();
    } else if (frame.type === "message_batch") {
      await handleBatch(frame.messages || []);
    } else if (frame.type === "resync_required") {
      await resync();
    } else if (frame.type === "ack") {
      if (frame.message) applyMessage(frame.message);
      afterNewMessages();
    }
  }

  function onErrorFrame(frame) {
    showNotice(frame.message || "Something went wrong.");
    // An error frame does not say which send it answers: re-send every send
    // still waiting on the socket over HTTP, whose answer is per message.
    // client_msg_id makes a send that did succeed come back as the same message.
    for (const [clientMsgId, entry] of pending) {
      if (entry.via === "socket") sendOverHttp(clientMsgId);
    }
  }

  function onClose(event) {
    connected = false;
    socket = null;
    stopPing();
    if (FINAL_CLOSE[event.code]) {
      stopped = true;
      offlineBanner.hidden = true;
      if (event.code === 4401) checkStillSignedIn();
      else showNotice(FINAL_CLOSE[event.code], { timeout: 0 });
      return;
    }
    offlineBanner.hidden = false;
    // Sends waiting for an ack go over HTTP now rather than after the reconnect.
    for (const [clientMsgId, entry] of pending) {
      if (entry.via === "socket") sendOverHttp(clientMsgId);
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (stopped) return;
    clearTimeout(reconnectTimer);
    const jitter = 1 + (Math.random() * 0.6 - 0.3); // ±30 %
    const delay = Math.round(backoff * jitter);
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    reconnectTimer = setTimeout(connect, delay);
  }

  function startPing() {
    stopPing();
    pingTimer = setInterval(ping, PING_MS);
  }

  function ping() {
    if (!sendFrame({ type: "ping" })) return;
    clearTimeout(pongTimer);
    // No frame at all within the timeout: the connection is dead.
    pongTimer = setTimeout(() => socket && socket.close(4000, "no pong"), PONG_TIMEOUT_MS);
  }

  function stopPing() {
    clearInterval(pingTimer);
    clearTimeout(pongTimer);
  }

  function sendFrame(frame) {
    if (!connected || !socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  // ---------------------------------------------------------------- sending

  function renderPending(clientMsgId, content, attachments) {
    const li = element("li", "msg msg-own msg-pending");
    li.dataset.clientMsgId = clientMsgId;
    const meta = element("div", "msg-meta");
    meta.append(element("span", "msg-author", me.username));
    meta.append(element("span", "msg-status", "sending…"));
    li.append(meta);
    if (content) li.append(element("div", "msg-body", content));
    if (attachments.length) {
      const ul = element("ul", "attachments");
      for (const a of attachments) ul.append(element("li", "attachment attachment-file", a.name));
      li.append(ul);
    }
    return li;
  }

  function setPendingStatus(clientMsgId, text, failed) {
    const entry = pending.get(clientMsgId);
    if (!entry) return;
    const status = entry.el.querySelector(".msg-status");
    status.textContent = text;
    entry.el.classList.toggle("msg-failed", !!failed);
    if (failed) {
      const retry = element("button", null, "Retry");
      retry.type = "button";
      retry.addEventListener("click", () => {
        entry.el.classList.remove("msg-failed");
        status.textContent = "sending…";
        deliver(clientMsgId);
      });
      const discard = element("button", null, "Discard");
      discard.type = "button";
      discard.addEventListener("click", () => {
        entry.el.remove();
        pending.delete(clientMsgId);
      });
      status.append(" ", retry, " ", discard);
    }
  }

  function send(content) {
    const text = content.trim();
    if (uploads.some((u) => !u.upload && !u.error)) {
      showNotice("Wait for the uploads to finish.");
      return false;
    }
    const attachments = uploads.filter((u) => u.upload).map((u) => u.upload);
    if (!text && !attachments.length) return false;
    if (text.length > state.messageMaxLength) {
      showNotice(`A message is at most ${state.messageMaxLength} characters.`);
      return false;
    }
    clearUploads();
    const clientMsgId = crypto.randomUUID();
    const el = renderPending(clientMsgId, text, attachments);
    pending.set(clientMsgId, { content: text, attachments, el, via: null, timer: null });
    removeEmptyPlaceholder();
    list.append(el);
    scrollToBottom();
    deliver(clientMsgId);
    return true;
  }

  function deliver(clientMsgId) {
    const entry = pending.get(clientMsgId);
    if (!entry) return;
    clearTimeout(entry.timer);
    // A send with attachments goes over HTTP (POST /api/messages takes
    // attachment_ids; docs/API.md); plain text takes the socket.
    if (entry.attachments.length) return sendOverHttp(clientMsgId);
    const frame = { type: "message.send", content: entry.content, client_msg_id: clientMsgId };
    if (sendFrame(frame)) {
      entry.via = "socket";
      // No ack in time: ask over HTTP, which answers with the message if it exists.
      entry.timer = setTimeout(() => sendOverHttp(clientMsgId), ACK_TIMEOUT_MS);
    } else {
      sendOverHttp(clientMsgId);
    }
  }

  async function sendOverHttp(clientMsgId) {
    const entry = pending.get(clientMsgId);
    if (!entry || entry.via === "http") return;
    clearTimeout(entry.timer);
    entry.via = "http";
    try {
      const body = { project_id: projectId, content: entry.content, client_msg_id: clientMsgId };
      if (entry.attachments.length) body.attachment_ids = entry.attachments.map((a) => a.id);
      const message = await api("POST", "/api/messages", body);
      applyMessage(message);
      afterNewMessages();
    } catch (error) {
      if (!pending.has(clientMsgId)) return; // the socket confirmed it meanwhile
      entry.via = "failed";
      setPendingStatus(clientMsgId, error instanceof ApiError ? error.message : "Not sent (offline).", true);
    }
  }

  // ---------------------------------------------------------------- edit and delete

  function openEditor(id) {
    const known = byId.get(id);
    if (!known || known.data.deleted || editing.has(id)) return;
    editing.add(id);
    const body = known.el.querySelector(".msg-body");
    const editor = element("form", "msg-editor");
    const label = element("label", "visually-hidden", "Edit message");
    const area = element("textarea");
    area.id = `edit-${id}`;
    label.htmlFor = area.id;
    area.value = known.data.content;
    area.rows = Math.min(8, known.data.content.split("\n").length + 1);
    area.maxLength = state.messageMaxLength;
    const buttons = element("div", "msg-editor-buttons");
    const save = element("button", "primary", "Save");
    save.type = "submit";
    const cancel = element("button", null, "Cancel");
    cancel.type = "button";
    buttons.append(save, cancel);
    editor.append(label, area, buttons);
    if (body) body.replaceWith(editor);
    else known.el.querySelector(".msg-meta").after(editor);
    area.focus();

    const close = () => {
      editing.delete(id);
      const current = byId.get(id);
      if (!current) return;
      const el = renderMessage(current.data);
      current.el.replaceWith(el);
      current.el = el;
    };
    const submit = async () => {
      const content = area.value.trim();
      if (content === known.data.content) return close();
      if (!content && !(known.data.attachments || []).length) return close();
      if (!mentionsEveryone(known.data.content) && !confirmMentionAll(content)) return;
      save.disabled = true;
      try {
        const message = await api("PATCH", `/api/messages/${id}`, { content });
        editing.delete(id);
        const current = byId.get(id);
        if (current && message.changed_seq > current.data.changed_seq) current.data = message;
        close();
      } catch (error) {
        save.disabled = false;
        showNotice(error.message);
      }
    };
    editor.addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
    });
    cancel.addEventListener("click", close);
    area.addEventListener("keydown", (event) => {
      if (event.key === "Escape") close();
      else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submit();
      }
    });
  }

  async function deleteMessage(id) {
    const known = byId.get(id);
    if (!known || !window.confirm("Delete this message?")) return;
    try {
      await api("DELETE", `/api/messages/${id}`);
      // Show the tombstone now; the broadcast change (a higher changed_seq)
      // replaces it with the server's version.
      const current = byId.get(id);
      if (current && !current.data.deleted) {
        editing.delete(id);
        current.data = { ...current.data, content: "", deleted: true };
        const el = renderMessage(current.data);
        current.el.replaceWith(el);
        current.el = el;
      }
    } catch (error) {
      showNotice(error.message);
    }
  }

  // ---------------------------------------------------------------- reactions

  /** Add my reaction, or remove it when it is there; everyone sees the change
   *  from the socket (a reaction change is a change of the message). */
  async function toggleReaction(id, emoji) {
    const known = byId.get(id);
    if (!known || known.data.deleted) return;
    const mine = (known.data.reactions || []).some((r) => r.emoji === emoji && isMine(r));
    try {
      if (mine) {
        await api("DELETE", `/api/messages/${id}/reactions?emoji=${encodeURIComponent(emoji)}`);
        // 204 carries no message: show it now; the change (a higher
        // changed_seq) replaces this with the server's version.
        const current = byId.get(id);
        if (!current) return;
        const reactions = (current.data.reactions || [])
          .map((r) => (r.emoji === emoji && isMine(r)
            ? { ...r, count: r.count - 1, user_ids: r.user_ids.filter((u) => u !== me.id) }
            : r))
          .filter((r) => r.count > 0);
        current.data = { ...current.data, reactions };
        refreshReactions(current);
      } else {
        // user_ids lists the first 50 reactors: past them, whether one is
        // mine is unknown, and a POST that was there changes nothing (the
        // same changed_seq comes back): then the click meant removing it.
        const shown = (known.data.reactions || []).find((r) => r.emoji === emoji);
        const unsure = shown && shown.count > shown.user_ids.length;
        const before = known.data.changed_seq;
        const data = await api("POST", `/api/messages/${id}/reactions`, { emoji });
        if (unsure && data && data.changed_seq === before) {
          await api("DELETE", `/api/messages/${id}/reactions?emoji=${encodeURIComponent(emoji)}`);
          return;
        }
        applyMessage(data);
      }
    } catch (error) {
      showNotice(error.message);
    }
  }

  // ---------------------------------------------------------------- attachments

  function uploadError(status, body, file) {
    if (status === 413) {
      return `${file.name} is too large: files are at most ${formatSize(uploadMaxBytes)}.`;
    }
    const message = body && body.error && body.error.message;
    if (status === 401) signedOut();
    if (message) return `${file.name}: ${message}`;
    return status ? `${file.name} was not uploaded (${status}).` : `${file.name} was not uploaded (offline?).`;
  }

  function renderUploadChip(entry) {
    const li = element("li", "pending-attachment");
    const name = element("span", "pending-attachment-name", entry.file.name);
    const size = element("span", "pending-attachment-size", formatSize(entry.file.size));
    const progress = element("progress");
    progress.max = 1;
    progress.value = 0;
    progress.setAttribute("aria-label", `Uploading ${entry.file.name}`);
    const status = element("span", "pending-attachment-status");
    const remove = element("button", "pending-attachment-remove", "×");
    remove.type = "button";
    remove.setAttribute("aria-label", `Remove ${entry.file.name}`);
    remove.addEventListener("click", () => removeUpload(entry));
    li.append(name, size, progress, status, remove);
    return li;
  }

  function updatePendingList() {
    pendingList.hidden = uploads.length === 0;
  }

  function failUpload(entry, text) {
    entry.error = text;
    entry.xhr = null;
    entry.el.classList.add("pending-attachment-failed");
    const progress = entry.el.querySelector("progress");
    if (progress) progress.remove();
    const status = entry.el.querySelector(".pending-attachment-status");
    status.textContent = text;
    status.setAttribute("role", "alert");
  }

  function removeUpload(entry) {
    if (entry.xhr) entry.xhr.abort();
    entry.el.remove();
    const index = uploads.indexOf(entry);
    if (index >= 0) uploads.splice(index, 1);
    updatePendingList();
  }

  function clearUploads() {
    for (const entry of uploads.slice()) removeUpload(entry);
  }

  /** Upload one file with progress (XMLHttpRequest: fetch reports none for uploads). */
  async function startUpload(entry) {
    let token;
    try {
      token = await csrfToken();
    } catch (_) {
      failUpload(entry, uploadError(0, null, entry.file));
      return;
    }
    if (!uploads.includes(entry)) return; // removed meanwhile
    const xhr = new XMLHttpRequest();
    entry.xhr = xhr;
    const progress = entry.el.querySelector("progress");
    xhr.open("POST", "/api/uploads");
    xhr.setRequestHeader("X-CSRFToken", token);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && progress) progress.value = event.loaded / event.total;
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (_) {
        body = null;
      }
      if (xhr.status === 201 && body && body.id != null) {
        entry.upload = body;
        entry.xhr = null;
        entry.el.classList.add("pending-attachment-done");
        if (progress) progress.value = 1;
        entry.el.querySelector(".pending-attachment-status").textContent = "ready";
      } else {
        failUpload(entry, uploadError(xhr.status, body, entry.file));
      }
    });
    xhr.addEventListener("error", () => failUpload(entry, uploadError(0, null, entry.file)));
    const form = new FormData();
    form.append("project_id", String(projectId));
    form.append("file", entry.file, entry.file.name);
    xhr.send(form);
  }

  /** Attach files (button, paste or drop): each uploads at once, shown as a chip. */
  function addFiles(fileList) {
    // Attaching needs the API; an older page's composer posts the plain form.
    if (!state.isLatest) return;
    for (const file of fileList) {
      if (uploads.length >= MAX_ATTACHMENTS) {
        showNotice(`A message takes at most ${MAX_ATTACHMENTS} files.`);
        break;
      }
      const entry = { file, el: null, xhr: null, upload: null, error: null };
      entry.el = renderUploadChip(entry);
      uploads.push(entry);
      pendingList.append(entry.el);
      if (uploadMaxBytes && file.size > uploadMaxBytes) {
        failUpload(entry, uploadError(413, null, file));
      } else if (file.size === 0) {
        failUpload(entry, `${file.name} is empty.`);
      } else {
        startUpload(entry);
      }
    }
    updatePendingList();
  }

  function hasFiles(dataTransfer) {
    return !!dataTransfer && [...dataTransfer.types].includes("Files");
  }

  function setUpAttaching() {
    if (!state.isLatest) return;
    attachButton.hidden = false;
    attachButton.addEventListener("click", () => attachInput.click());
    attachInput.addEventListener("change", () => {
      addFiles([...attachInput.files]);
      attachInput.value = "";
    });
    input.addEventListener("paste", (event) => {
      const data = event.clipboardData;
      const files = data ? [...data.files] : [];
      if (!files.length) return;
      // Files with text beside them (a copied web page): paste both.
      if (![...data.types].includes("text/plain")) event.preventDefault();
      addFiles(files);
    });
    for (const zone of [composer, scroller]) {
      zone.addEventListener("dragover", (event) => {
        if (!hasFiles(event.dataTransfer)) return;
        event.preventDefault();
        event.dataTransfer.dropEffect = "copy";
        zone.classList.add("drop-target");
      });
      zone.addEventListener("dragleave", () => zone.classList.remove("drop-target"));
      zone.addEventListener("drop", (event) => {
        zone.classList.remove("drop-target");
        if (!event.dataTransfer || !event.dataTransfer.files.length) return;
        event.preventDefault();
        event.stopPropagation();
        addFiles([...event.dataTransfer.files]);
      });
    }
    // A file dropped beside the zones must not replace the page with itself.
    window.addEventListener("dragover", (event) => {
      if (hasFiles(event.dataTransfer)) event.preventDefault();
    });
    window.addEventListener("drop", (event) => {
      if (hasFiles(event.dataTransfer)) event.preventDefault();
    });
  }

  // ---------------------------------------------------------------- typing, presence, reads

  function renderTyping() {
    const names = [...typers.keys()];
    if (names.length === 0) typingArea.textContent = "";
    else if (names.length === 1) typingArea.textContent = `${names[0]} is typing…`;
    else if (names.length === 2) typingArea.textContent = `${names[0]} and ${names[1]} are typing…`;
    else typingArea.textContent = "Several people are typing…";
  }

  function showTyping(username) {
    clearTimeout(typers.get(username));
    typers.set(username, setTimeout(() => clearTyping(username), TYPING_SHOW_MS));
    renderTyping();
  }

  function clearTyping(username) {
    if (!typers.has(username)) return;
    clearTimeout(typers.get(username));
    typers.delete(username);
    renderTyping();
  }

  function renderOnline(users) {
    users.forEach(learnName);
    onlineList.replaceChildren(
      ...users.map((user) => {
        const li = element("li", "user", user.id === me.id ? `${user.username} (you)` : user.username);
        return li;
      }),
    );
    if (!users.length) onlineList.append(element("li", "muted", "nobody"));
  }

  function scheduleRead() {
    if (!state.isLatest || document.visibilityState !== "visible") return;
    if (newestSeq <= lastReadSent) return;
    clearTimeout(readTimer);
    readTimer = setTimeout(sendRead, READ_DEBOUNCE_MS);
  }

  function sendRead() {
    const seq = newestSeq;
    if (seq <= lastReadSent || document.visibilityState !== "visible") return;
    if (sendFrame({ type: "read", seq })) {
      lastReadSent = seq;
    } else {
      api("POST", `/api/projects/${projectId}/read`, { seq })
        .then(() => { lastReadSent = Math.max(lastReadSent, seq); })
        .catch(() => {});
    }
  }

  function afterNewMessages() {
    if (isNearBottom()) scrollToBottom();
    scheduleRead();
  }

  // ---------------------------------------------------------------- scrolling and older pages

  // The scroller is flex-direction: column-reverse, so scrollTop is 0 at the
  // bottom and negative above it (the standard in current browsers).
  function distanceFromBottom() {
    return Math.abs(scroller.scrollTop);
  }

  function distanceFromTop() {
    return scroller.scrollHeight - scroller.clientHeight - Math.abs(scroller.scrollTop);
  }

  function isNearBottom() {
    return distanceFromBottom() < 80;
  }

  function scrollToBottom() {
    scroller.scrollTop = 0;
  }

  function updateOlderLink() {
    const nav = $("history-nav");
    nav.replaceChildren();
    if (hasOlder && oldestSeq != null) {
      const a = element("a", null, "Older messages");
      a.id = "older-link";
      a.href = `?before=${oldestSeq}`;
      a.rel = "prev";
      a.addEventListener("click", (event) => {
        event.preventDefault();
        loadOlder();
      });
      nav.append(a);
    } else if (byId.size) {
      nav.append(element("span", "muted", `This is the start of ${state.projectName}.`));
    }
  }

  async function loadOlder() {
    if (loadingOlder || !hasOlder || oldestSeq == null) return;
    loadingOlder = true;
    try {
      const page = await api("GET", messagesUrl(`before=${oldestSeq}&limit=${PAGE_LIMIT}`));
      const fragment = document.createDocumentFragment();
      for (const m of page.items.slice().reverse()) {
        if (byId.has(m.id)) continue;
        learnName(m.user);
        const el = renderMessage(m);
        byId.set(m.id, { data: m, el });
        fragment.append(el);
      }
      const firstMessage = list.querySelector(".msg");
      if (firstMessage) firstMessage.before(fragment);
      else list.append(fragment);
      if (page.items.length) oldestSeq = Math.min(oldestSeq, page.items[page.items.length - 1].seq);
      hasOlder = page.has_more;
      updateOlderLink();
    } catch (error) {
      showNotice(error.message);
      return;
    } finally {
      loadingOlder = false;
    }
    fillScroller();
  }

  /** Load older pages until the history can scroll (scrolling loads the rest). */
  function fillScroller() {
    if (hasOlder && scroller.scrollHeight <= scroller.clientHeight) loadOlder();
  }

  // ---------------------------------------------------------------- composer

  function onComposerSubmit(event) {
    if (!confirmMentionAll(input.value)) {
      event.preventDefault();
      return;
    }
    // On an older page the form posts normally and lands on the latest page.
    if (!state.isLatest) return;
    event.preventDefault();
    if (send(input.value)) {
      input.value = "";
      const error = $("composer-error");
      if (error) error.remove();
      input.removeAttribute("aria-invalid");
    }
    input.focus();
  }

  function onComposerKeydown(event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  }

  function onComposerInput() {
    const now = Date.now();
    if (!input.value.trim() || now - lastTypingSent < TYPING_SEND_MS) return;
    if (sendFrame({ type: "typing" })) lastTypingSent = now;
  }

  // ---------------------------------------------------------------- start

  /** Take over the server-rendered messages, with their JSON from the page state. */
  function adoptRenderedMessages() {
    const rendered = new Map((state.messages || []).map((m) => [m.id, m]));
    for (const m of rendered.values()) learnName(m.user);
    for (const li of list.querySelectorAll(".msg")) {
      const m = rendered.get(Number(li.dataset.id));
      if (!m) continue;
      const known = { data: m, el: li };
      byId.set(m.id, known);
      const time = li.querySelector("time");
      if (time) time.textContent = formatTime(time.dateTime);
      // The page's reactions are a plain list; these buttons toggle.
      refreshReactions(known);
      addControls(li, m);
    }
    delete state.messages;
    updateOlderLink();
  }

  function start() {
    adoptRenderedMessages();
    // A message of attachments only may have no text: send() decides.
    input.required = false;
    setUpAttaching();
    composer.addEventListener("submit", onComposerSubmit);
    input.addEventListener("keydown", onComposerKeydown);
    input.addEventListener("input", onComposerInput);
    scroller.addEventListener("scroll", () => {
      if (distanceFromTop() < 200) loadOlder();
      if (isNearBottom()) scheduleRead();
    }, { passive: true });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") {
        scheduleRead();
        // A tab woken from sleep may hold a dead socket: check it now.
        if (connected) ping();
      }
    });
    window.addEventListener("online", () => {
      if (!connected && !stopped) {
        backoff = BACKOFF_MIN_MS;
        connect();
      }
    });
    const target = location.hash && document.getElementById(location.hash.slice(1));
    if (target) target.scrollIntoView({ block: "center" });
    else scrollToBottom();
    fillScroller();
    connect();
  }

  window.chatClient = {
    get socket() { return socket; },
    get connected() { return connected; },
    get lastChangedSeq() { return lastChangedSeq; },
    get pendingCount() { return pending.size; },
    get uploadsInProgress() { return uploads.filter((u) => !u.upload && !u.error).length; },
    /** Drop the socket as a network failure would (tests); the client reconnects. */
    dropSocket() {
      if (socket) socket.close(4000, "dropped by test");
    },
    send,
  };

  start();
})();
