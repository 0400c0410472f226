<%--
  Sleeps ?ms=N milliseconds, then answers JSON {node, slept_ms}.
  ?flush_first=1 sends the status line and headers (chunked) before sleeping, so the
  delay falls between the headers and the body.
--%><%@ page session="false" isErrorPage="true" trimDirectiveWhitespaces="true"
    import="java.util.*" %><%@ include file="/WEB-INF/jspf/common.jspf" %><%
    tagResponse(response);
    long ms = longParam(request, "ms", 0);
    boolean flushFirst = flagParam(request, "flush_first");
    Map<String, Object> r = new LinkedHashMap<>();
    r.put("node", nodeRoute());
    r.put("slept_ms", ms);
    if (flushFirst) {
        response.setContentType("application/json;charset=UTF-8");
        response.flushBuffer();
    }
    long start = System.nanoTime();
    sleepMs(ms);
    r.put("elapsed_ms", (System.nanoTime() - start) / 1000000L);
    if (flushFirst) {
        try {
            response.getOutputStream().write((json(r) + "\n").getBytes(java.nio.charset.StandardCharsets.UTF_8));
        } catch (java.io.IOException clientGone) {
            // Client went away while we slept.
        }
    } else {
        try {
            sendJson(response, r);
        } catch (java.io.IOException clientGone) {
            // Client went away while we slept.
        }
    }
%>
