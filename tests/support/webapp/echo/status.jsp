<%--
  Answers ?code=N (default 200) via setStatus (not sendError, so no error page).
  Body "status N\n" unless N is 1xx, 204 or 304 or ?empty=1. ?location=URL sets Location;
  every ?header=Name:Value adds a response header.
--%><%@ page session="false" isErrorPage="true" trimDirectiveWhitespaces="true"
    %><%@ include file="/WEB-INF/jspf/common.jspf" %><%
    tagResponse(response);
    int code = (int) longParam(request, "code", 200);
    response.setStatus(code);
    String location = request.getParameter("location");
    if (location != null) {
        response.setHeader("Location", location);
    }
    addHeaderParams(request, response);
    boolean bodyless = code < 200 || code == 204 || code == 304 || flagParam(request, "empty");
    if (bodyless) {
        response.setContentType(null);  // undo Jasper's default text/html
        if (code >= 200 && code != 204 && code != 304) {
            response.setContentLength(0);
        }
    } else {
        byte[] b = ("status " + code + "\n").getBytes(java.nio.charset.StandardCharsets.US_ASCII);
        response.setContentType("text/plain;charset=US-ASCII");
        response.setContentLength(b.length);
        response.getOutputStream().write(b);
    }
%>
