<%--
  Reads the whole request body (Content-Length or chunked) and answers its size and
  SHA-256. ?delay_ms=D waits before reading; ?read_delay_ms=R sleeps after every read of
  ?buffer=B bytes (default 65536), to exert backpressure.
--%><%@ page session="false" isErrorPage="true" trimDirectiveWhitespaces="true"
    import="java.util.*" %><%@ include file="/WEB-INF/jspf/common.jspf" %><%
    tagResponse(response);
    long delayMs = longParam(request, "delay_ms", 0);
    sleepMs(delayMs);
    int buffer = (int) Math.max(1, Math.min(longParam(request, "buffer", 65536), 1 << 24));
    Map<String, Object> body = consumeBody(request, buffer, longParam(request, "read_delay_ms", 0));
    Map<String, Object> r = new LinkedHashMap<>();
    r.put("node", nodeRoute());
    r.put("method", request.getMethod());
    r.put("contentLength", request.getContentLengthLong());
    r.put("transferEncoding", request.getHeader("Transfer-Encoding"));
    r.put("contentType", request.getContentType());
    r.put("bytes", body.get("bytes"));
    r.put("sha256", body.get("sha256"));
    sendJson(response, r);
%>
