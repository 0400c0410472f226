<%--
  Creates (or finds) the HTTP session. JSON: existing (a session came with the request),
  created, id (Tomcat suffixes ".<jvmRoute>"), hits (per-session counter). ?invalidate=1 ends
  the existing session instead (no new one is created).
--%><%@ page session="false" isErrorPage="true" trimDirectiveWhitespaces="true"
    import="java.util.*" %><%@ include file="/WEB-INF/jspf/common.jspf" %><%
    tagResponse(response);
    jakarta.servlet.http.HttpSession s = request.getSession(false);
    Map<String, Object> r = new LinkedHashMap<>();
    r.put("node", nodeRoute());
    r.put("requestedSessionId", request.getRequestedSessionId());
    r.put("existing", s != null);
    if (flagParam(request, "invalidate")) {
        if (s != null) {
            r.put("invalidatedId", s.getId());
            s.invalidate();
        }
        r.put("created", false);
        r.put("id", null);
        r.put("hits", 0);
    } else {
        boolean created = false;
        if (s == null) {
            s = request.getSession(true);
            created = true;
        }
        Integer hits;
        synchronized (s) {
            Integer old = (Integer) s.getAttribute("hits");
            hits = old == null ? 1 : old + 1;
            s.setAttribute("hits", hits);
        }
        r.put("created", created);
        r.put("id", s.getId());
        r.put("hits", hits);
    }
    sendJson(response, r);
%>
