/* The sidebar of every signed-in page: live counts over /ws/me/, the total
 * unread count in the title, browser notifications for mentions, @all and
 * DMs while the page is hidden (docs/PROTOCOL.md, "/ws/me/").
 *
 * Plain JavaScript, no build step; the server-rendered list
 * (templates/_sidebar.html) works without it. State comes from the page's
 * json_script (#sidebar-state): the strict CSP allows no inline script.
 */
(function () {
  "use strict";

  const stateNode = document.getElementById("sidebar-state");
  const sidebar = document.getElementById("sidebar");
  if (!stateNode || !sidebar) return;
  const state = JSON.parse(stateNode.textContent);
  const lists = {
    project: document.getElementById("sidebar-projects"),
    dm: document.getElementById("sidebar-dms"),
  };
  // Close codes after which reconnecting cannot help (docs/PROTOCOL.md §8).
  const FINAL = new Set([4403, 4404, 4429]);
  const MAX_BACKOFF_MS = 30000;

  const projects = new Map(); // id -> {id, name, kind, unread_count, mention_count}
  for (const item of state.projects) projects.set(item.id, item);
  // The page's own title: the server put "(n) " before it when n > 0.
  const titleBase = document.title.replace(/^\(\d+\) /, "");
  let socket = null;
  let attempts = 0;
  let stopped = false;
  let reconnectTimer = null;
  let helloSeen = false;

  document.documentElement.classList.add("js-sidebar");

  // ------------------------------------------------------------ mobile toggle

  const toggle = document.getElementById("sidebar-toggle");
  if (toggle) {
    toggle.hidden = false;
    toggle.addEventListener("click", () => {
      const open = !document.body.classList.contains("sidebar-open");
      document.body.classList.toggle("sidebar-open", open);
      toggle.setAttribute("aria-expanded", String(open));
    });
    sidebar.addEventListener("click", (event) => {
      if (event.target.closest("a")) document.body.classList.remove("sidebar-open");
    });
  }

  // ------------------------------------------------------------------- render

  function itemNode(id) {
    return sidebar.querySelector(`.sidebar-item[data-project-id="${id}"]`);
  }

  function createItem(item) {
    const li = document.createElement("li");
    li.className = "sidebar-item";
    li.dataset.projectId = String(item.id);
    const link = document.createElement("a");
    link.className = "sidebar-link";
    link.href = `/projects/${item.id}/`;
    const name = document.createElement("span");
    name.className = "sidebar-name";
    name.textContent = item.name;
    const badges = document.createElement("span");
    badges.className = "sidebar-badges";
    const mention = document.createElement("span");
    mention.className = "badge-mention";
    mention.title = "Unread mentions of you";
    const unread = document.createElement("span");
    unread.className = "badge-unread";
    unread.title = "Unread messages";
    badges.append(mention, unread);
    link.append(name, " ", badges);
    li.append(link);
    const list = lists[item.kind === "dm" ? "dm" : "project"];
    const empty = list.querySelector(".sidebar-empty");
    if (empty) empty.remove();
    // Keep the list's order: by name, as the server renders it.
    const after = [...list.querySelectorAll(".sidebar-item")].find(
      (node) => node.querySelector(".sidebar-name").textContent.localeCompare(item.name) > 0
    );
    list.insertBefore(li, after || null);
    return li;
  }

  function render(item) {
    const li = itemNode(item.id) || createItem(item);
    const current = state.currentProjectId === item.id;
    li.classList.toggle("is-current", current);
    li.classList.toggle("has-unread", item.unread_count > 0);
    const unread = li.querySelector(".badge-unread");
    unread.textContent = String(item.unread_count);
    unread.hidden = !item.unread_count;
    const mention = li.querySelector(".badge-mention");
    mention.textContent = `@${item.mention_count}`;
    mention.hidden = !item.mention_count;
  }

  function removeItem(id) {
    projects.delete(id);
    const li = itemNode(id);
    if (li) li.remove();
  }

  function updateTitle() {
    let total = 0;
    for (const item of projects.values()) total += item.unread_count;
    document.title = total > 0 ? `(${total}) ${titleBase}` : titleBase;
  }

  // ------------------------------------------------------------------- frames

  function onHello(frame) {
    helloSeen = true;
    const seen = new Set();
    for (const item of frame.projects) {
      projects.set(item.id, item);
      seen.add(item.id);
      render(item);
    }
    for (const id of [...projects.keys()]) if (!seen.has(id)) removeItem(id);
    updateTitle();
  }

  function onUpdate(frame) {
    const item = projects.get(frame.project_id);
    if (!item) return;
    item.unread_count = frame.unread_count;
    item.mention_count = frame.mention_count;
    item.seq = frame.seq;
    render(item);
    updateTitle();
    if (frame.notify) notify(item, frame.notify);
  }

  function onMembership(frame) {
    if (frame.state === "removed") {
      removeItem(frame.project_id);
    } else if (frame.project) {
      projects.set(frame.project.id, frame.project);
      render(frame.project);
    }
    updateTitle();
  }

  function onFrame(frame) {
    if (frame.type === "hello") onHello(frame);
    else if (frame.type === "project_update") onUpdate(frame);
    else if (frame.type === "membership") onMembership(frame);
  }

  // ------------------------------------------------------------ notifications

  const notifyButton = document.getElementById("notify-enable");

  function showNotifyButton() {
    if (!notifyButton) return;
    notifyButton.hidden = !("Notification" in window) || Notification.permission !== "default";
  }

  if (notifyButton) {
    showNotifyButton();
    // Permission is asked only from this click, never on load.
    notifyButton.addEventListener("click", () => {
      Notification.requestPermission().then(showNotifyButton, showNotifyButton);
    });
  }

  function notify(item, note) {
    // Only while the page is hidden; the title shows the count either way.
    if (!document.hidden || !("Notification" in window)) return;
    if (Notification.permission !== "granted") return;
    const title = note.mention
      ? `${note.user} mentioned you in ${item.name}`
      : `${note.user} in ${item.name}`;
    // The same tag in every tab: the browser shows one notification, not one per tab.
    const shown = new Notification(title, { body: note.excerpt, tag: `m-${item.id}-${note.seq}` });
    shown.addEventListener("click", () => {
      window.focus();
      location.href = `/projects/${item.id}/?around=${note.seq}#m-${note.seq}`;
      shown.close();
    });
  }

  // ------------------------------------------------------------------- socket

  function socketUrl() {
    // state.wsBase: a separate socket server (WS_PUBLIC_URL); else this origin.
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${state.wsBase || `${scheme}://${location.host}`}/ws/me/`;
  }

  function connect() {
    if (stopped) return;
    const ws = new WebSocket(socketUrl());
    socket = ws;
    helloSeen = false;
    ws.addEventListener("open", () => {
      attempts = 0;
    });
    ws.addEventListener("message", (event) => {
      if (ws !== socket) return;
      try {
        onFrame(JSON.parse(event.data));
      } catch (_) {
        /* a frame this page does not understand: ignored */
      }
    });
    ws.addEventListener("close", (event) => {
      if (ws !== socket) return;
      socket = null;
      if (FINAL.has(event.code)) {
        stopped = true;
      } else if (event.code === 4401) {
        // This browser may hold a new session (its own password change).
        fetch("/api/auth/me", { credentials: "same-origin" }).then((response) => {
          if (response.ok) scheduleReconnect();
          else stopped = true;
        }, scheduleReconnect);
      } else {
        scheduleReconnect();
      }
    });
  }

  function scheduleReconnect() {
    if (stopped) return;
    clearTimeout(reconnectTimer);
    const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** attempts) * (0.5 + Math.random() / 2);
    attempts += 1;
    reconnectTimer = setTimeout(connect, delay);
  }

  window.addEventListener("online", () => {
    if (!socket && !stopped) {
      attempts = 0;
      clearTimeout(reconnectTimer);
      connect();
    }
  });

  // For tests and the console: whether the live counts are flowing.
  window.chatSidebar = {
    get connected() {
      return !!socket && socket.readyState === WebSocket.OPEN && helloSeen;
    },
  };

  updateTitle();
  connect();
})();
