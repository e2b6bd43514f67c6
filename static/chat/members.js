/* The project page's members panel (templates/chat/_members.html; docs/API.md "Members").
 *
 * The server renders the first page of members; this script adds, for those
 * allowed, a Remove button (owners and admins; admins not on owners) and a role
 * select (owners), both through the JSON API, and loads the rest of a long
 * list. The server checks every rule again (projects.actions): the controls
 * only spare a click that would be refused. Names reach the DOM through
 * textContent only.
 */
(function () {
  "use strict";

  const panel = document.getElementById("members-panel");
  if (!panel) return;
  const list = document.getElementById("members-list");
  const errorBox = document.getElementById("members-error");
  const totalBox = document.getElementById("members-total");
  const countBox = document.getElementById("member-count");
  const moreNote = document.getElementById("members-more-note");
  const projectId = panel.dataset.projectId;
  const me = Number(panel.dataset.me);
  const myRole = panel.dataset.myRole;
  const canRemove = panel.dataset.canRemove === "true";
  const canChangeRoles = panel.dataset.canChangeRoles === "true";
  const ROLES = ["owner", "admin", "member"];
  const PER_PAGE = 100;
  let total = Number(panel.dataset.total);
  let loadedAll = Number(panel.dataset.shown) >= total;

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) return Promise.resolve(decodeURIComponent(match[1]));
    const field = document.querySelector("input[name=csrfmiddlewaretoken]");
    if (field && field.value) return Promise.resolve(field.value);
    return fetch("/api/auth/csrf", { credentials: "same-origin" })
      .then((response) => response.json())
      .then((body) => body.csrf_token);
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      headers["X-CSRFToken"] = await csrfToken();
    }
    const response = await fetch(path, {
      method, headers, credentials: "same-origin",
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
      const error = (data && data.error) || {};
      throw new Error(error.message || `Request failed (${response.status}).`);
    }
    return data;
  }

  const membersUrl = (suffix) => `/api/projects/${projectId}/members${suffix || ""}`;

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  function setTotal(n) {
    total = n;
    totalBox.textContent = String(n);
    if (countBox) countBox.textContent = `${n} member${n === 1 ? "" : "s"}`;
  }

  function canRemoveRow(userId, role) {
    if (userId === me) return false; // leaving has its own button
    if (!canRemove) return false;
    return role !== "owner" || myRole === "owner";
  }

  function nameOf(li) {
    return li.dataset.username;
  }

  function decorate(li) {
    const userId = Number(li.dataset.userId);
    const role = li.dataset.role;
    li.querySelectorAll(".member-controls").forEach((node) => node.remove());
    const controls = document.createElement("span");
    controls.className = "member-controls";
    if (canChangeRoles) {
      const select = document.createElement("select");
      select.setAttribute("aria-label", `Role of ${nameOf(li)}`);
      for (const choice of ROLES) {
        const option = document.createElement("option");
        option.value = choice;
        option.textContent = choice;
        option.selected = choice === role;
        select.append(option);
      }
      select.addEventListener("change", () => changeRole(li, select));
      controls.append(select);
      li.querySelector(".member-role").hidden = true;
    }
    if (canRemoveRow(userId, role)) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "link-button member-remove";
      button.textContent = "Remove";
      button.setAttribute("aria-label", `Remove ${nameOf(li)}`);
      button.addEventListener("click", () => removeMember(li, button));
      controls.append(button);
    }
    if (controls.childNodes.length) li.append(controls);
  }

  async function removeMember(li, button) {
    if (!window.confirm(`Remove ${nameOf(li)} from this project?`)) return;
    button.disabled = true;
    showError("");
    try {
      await api("DELETE", membersUrl(`/${li.dataset.userId}`));
      li.remove();
      setTotal(Math.max(0, total - 1));
    } catch (error) {
      button.disabled = false;
      showError(error.message);
    }
  }

  async function changeRole(li, select) {
    const previous = li.dataset.role;
    select.disabled = true;
    showError("");
    try {
      const member = await api("PATCH", membersUrl(`/${li.dataset.userId}`), { role: select.value });
      li.dataset.role = member.role;
      const badge = li.querySelector(".member-role");
      badge.textContent = member.role;
      badge.className = `member-role role-${member.role}`;
      if (Number(li.dataset.userId) === me && member.role !== "owner") {
        // I am no longer an owner: the page's controls must follow (a reload
        // renders them for my new role).
        window.location.reload();
        return;
      }
      decorate(li);
    } catch (error) {
      select.value = previous;
      select.disabled = false;
      showError(error.message);
    }
  }

  function renderMember(member) {
    const li = document.createElement("li");
    li.className = "member";
    li.dataset.userId = String(member.user.id);
    li.dataset.username = member.user.username;
    li.dataset.role = member.role;
    const name = document.createElement("span");
    name.className = "member-name";
    name.textContent = member.user.display_name || member.user.username;
    if (member.user.display_name) {
      const handle = document.createElement("span");
      handle.className = "muted";
      handle.textContent = ` @${member.user.username}`;
      name.append(handle);
    }
    if (member.user.id === me) {
      const you = document.createElement("span");
      you.className = "muted";
      you.textContent = " (you)";
      name.append(you);
    }
    const role = document.createElement("span");
    role.className = `member-role role-${member.role}`;
    role.textContent = member.role;
    li.append(name, role);
    return li;
  }

  /** A long list: the panel shows the first page; opening it loads the rest. */
  async function loadAll() {
    if (loadedAll) return;
    loadedAll = true;
    try {
      const seen = new Set([...list.children].map((li) => li.dataset.userId));
      for (let page = 1; ; page += 1) {
        const body = await api("GET", membersUrl(`?page=${page}&per_page=${PER_PAGE}`));
        for (const member of body.items) {
          if (seen.has(String(member.user.id))) continue;
          seen.add(String(member.user.id));
          const li = renderMember(member);
          list.append(li);
          decorate(li);
        }
        setTotal(body.total);
        if (!body.has_next) break;
      }
      if (moreNote) moreNote.hidden = true;
    } catch (error) {
      loadedAll = false;
      showError(error.message);
    }
  }

  for (const li of list.children) decorate(li);
  panel.addEventListener("toggle", () => {
    if (panel.open) loadAll();
  });

  window.chatMembers = { get total() { return total; } };
})();
