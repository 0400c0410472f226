<%--
  Streams ?bytes=N bytes of deterministic content: byte at offset i is (i % 251).
  Written in ?chunk=K byte pieces (default 65536), flushed after each; ?delay_ms=D sleeps
  between chunks (after each flush but the last); ?chunked=1 omits Content-Length (HTTP/1.1 then uses chunked coding).
--%><%@ page session="false" isErrorPage="true" trimDirectiveWhitespaces="true"
    %><%@ include file="/WEB-INF/jspf/common.jspf" %><%
    tagResponse(response);
    long total = longParam(request, "bytes", 0);
    int chunk = (int) Math.max(1, Math.min(longParam(request, "chunk", 65536), 1 << 24));
    long delayMs = longParam(request, "delay_ms", 0);
    byte[] pattern = new byte[chunk + 251];
    for (int i = 0; i < pattern.length; i++) {
        pattern[i] = (byte) (i % 251);
    }
    response.setContentType("application/octet-stream");
    response.setHeader("X-Echo-Bytes", Long.toString(total));
    if (!flagParam(request, "chunked")) {
        response.setContentLengthLong(total);
    }
    jakarta.servlet.ServletOutputStream os = response.getOutputStream();
    long sent = 0;
    try {
        while (sent < total) {
            int n = (int) Math.min(chunk, total - sent);
            os.write(pattern, (int) (sent % 251), n);
            os.flush();
            sent += n;
            if (sent < total) {
                sleepMs(delayMs);
            }
        }
    } catch (java.io.IOException clientGone) {
        // The client (or the proxy) went away mid-body: nothing more to do.
    }
%>
